"""``pipeline.yaml``: the schema of one pipeline's steps.

Every step is optional. A pipeline without ``render`` sends each request as it came (``plain``);
with ``render`` it parses the question and options, retrieves exemplars if ``retrieve`` is set,
renders its own prompt, generates, reads the answer and votes if ``ensemble`` says so.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Step(BaseModel):
    # Unknown keys are errors, as in gateway.yaml: a typo must not fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetrieveStep(_Step):
    """kNN few-shot: the k exemplars whose questions are nearest to the question (cosine)."""

    k: int = Field(default=5, ge=1, le=32)
    bank: str = Field(default="exemplars.jsonl", description="exemplar JSONL in the folder")
    embeddings: str = Field(default="exemplars.npy", description="one row per exemplar")
    embedder: Literal["all-MiniLM-L6-v2"] = "all-MiniLM-L6-v2"
    #: drop the farthest exemplars while the prompt is longer than this (keeps it in context)
    max_prompt_chars: int = Field(default=9000, ge=500)


class RenderStep(_Step):
    """Templates (file names in the folder) and what each one is given."""

    #: the system message; gets ``letters`` (the option letters, e.g. ['A', 'B', 'C', 'D'])
    system: str | None = None
    #: a question turn; gets ``question``, ``options`` (a list of {letter, text}) and ``letters``
    question: str
    #: an exemplar's answer turn; gets ``reasoning``, ``answer`` (a letter) and ``answer_text``
    exemplar_answer: str | None = None


class FreeformStep(_Step):
    """What a request without lettered options gets: a system message, or nothing (as is)."""

    #: a template for a system message put before the client's messages; gets no variables
    system: str | None = None


class GenerateStep(_Step):
    """Sampling defaults (the client's own values win) and how the answer is read."""

    max_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=0.0, ge=0, le=2)
    #: constrain the generation with vLLM structured outputs: to a letter, or to ``regex``
    constrain: Literal["none", "choice", "regex"] = "none"
    #: for constrain: regex; ``{letters}`` is replaced by a character class of the letters
    regex: str | None = None
    #: when no letter can be read from a reply, ask once more for the letter alone
    #: (constrained to the option letters, continuing the reply after "Answer:")
    fallback: Literal["none", "choice"] = "none"

    @model_validator(mode="after")
    def _regex_when_needed(self) -> GenerateStep:
        if (self.constrain == "regex") != (self.regex is not None):
            raise ValueError("set 'regex' exactly when constrain is 'regex'")
        return self


class EnsembleStep(_Step):
    """Several members, one vote. ``none``: one member, the options in the client's order."""

    kind: Literal["none", "choice_shuffle", "self_consistency"] = "none"
    k: int = Field(default=5, ge=1, le=16)
    #: choice_shuffle: orders are a function of this seed and the question
    seed: int = 0
    #: self_consistency: the sampling temperature of the k samples (vLLM's ``n``)
    temperature: float = Field(default=0.7, gt=0, le=2)


class ExemplarsStep(_Step):
    """How ``gateway exemplars build`` generates the self-generated chain of thought."""

    max_tokens: int = Field(default=192, ge=1)
    temperature: float = Field(default=0.0, ge=0, le=2)
    #: exemplars whose reasoning is longer are not kept (they would crowd the prompt)
    max_reasoning_chars: int = Field(default=900, ge=1)


class PipelineSpec(_Step):
    description: str = ""
    parse: bool = Field(
        default=True, description="find lettered options in the request; false: always free-form"
    )
    retrieve: RetrieveStep | None = None
    render: RenderStep | None = None
    freeform: FreeformStep | None = None
    generate: GenerateStep = Field(default_factory=GenerateStep)
    ensemble: EnsembleStep = Field(default_factory=EnsembleStep)
    exemplars: ExemplarsStep = Field(default_factory=ExemplarsStep)

    @model_validator(mode="after")
    def _consistent(self) -> PipelineSpec:
        if self.render is None and (self.retrieve is not None or self.ensemble.kind != "none"):
            raise ValueError("'retrieve' and 'ensemble' need a 'render' step")
        if self.retrieve and self.render and self.render.exemplar_answer is None:
            raise ValueError("'retrieve' needs 'render.exemplar_answer' for the few-shot turns")
        return self
