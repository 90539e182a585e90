"""``gateway.yaml``'s schema: every section, with the checks that need nothing but the file.

``config.loader`` reads a file into these models (phase 1); ``gateway.resolve`` checks what they
name against the machine and the other sections (phase 2).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from gateway.config.loop import (
    CASCADE_PIPELINE,
    CaptureSpec,
    CascadeStepSpec,
    check_cascade,
    fill_cascade_targets,
)
from gateway.config.scale import BalanceSpec, StateSpec

PACKAGED_PREFIX = "packaged:"
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


class _Spec(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class LaunchSpec(_Spec):
    """A vLLM server the gateway starts and supervises as a child process on loopback."""

    model: str = Field(description="'packaged:NAME', a local folder, or a model hub id")
    args: list[str] = Field(default_factory=list, description="extra vLLM command-line flags")
    env: dict[str, str] = Field(default_factory=dict)
    startup_timeout_s: float = Field(default=600.0, gt=0)
    restart_backoff_max_s: float = Field(default=60.0, gt=0)
    replicas: int = Field(default=1, ge=1, le=64, description="vLLM servers to launch")
    tool_parser: str | None = Field(
        default="auto",
        pattern=r"^[a-z0-9_.-]{1,64}$",
        description="vLLM's tool-call parser for this model's output (hermes, llama3_json, "
        "mistral, qwen3_xml, ...); 'auto': by model family (README), null: no tool calling",
    )
    chat_template: str | None = Field(
        default=None,
        description="a Jinja chat template file (relative to this file); default: the model's "
        "own, or for packaged models the packaged ChatML template with tools",
    )

    @field_validator("args")
    @classmethod
    def _no_host_or_port(cls, args: list[str]) -> list[str]:
        # The supervisor owns the address: vLLM must listen on loopback only.
        for flag in ("--host", "--port", "--served-model-name", "--model"):
            if any(a == flag or a.startswith(flag + "=") for a in args):
                raise ValueError(f"'{flag}' is set by the gateway; remove it from args")
        # Tool calling is a setting the gateway reasons about, so it is not hidden in args.
        for flag, key in (
            ("--tool-call-parser", "tool_parser"),
            ("--enable-auto-tool-choice", "tool_parser"),
            ("--chat-template", "chat_template"),
        ):
            if any(a == flag or a.startswith(flag + "=") for a in args):
                raise ValueError(f"'{flag}' is set by the gateway; use launch.{key} instead")
        return args


class PricingSpec(_Spec):
    """Token prices for cost figures in events, reports and evaluations (any currency)."""

    prompt_per_1m: float = Field(default=0.0, ge=0)
    completion_per_1m: float = Field(default=0.0, ge=0)

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float:
        return (
            (prompt_tokens or 0) * self.prompt_per_1m
            + (completion_tokens or 0) * self.completion_per_1m
        ) / 1e6


class VLLMModel(_Spec):
    """A model served by vLLM: launched by the gateway, or at existing URLs."""

    engine: Literal["vllm"]
    pricing: PricingSpec = Field(default_factory=PricingSpec)
    launch: LaunchSpec | None = None
    urls: list[str] | None = Field(default=None, min_length=1)
    upstream_model: str | None = Field(
        default=None, description="the name the upstream serves; default: the model id"
    )
    api_key_env: str | None = None
    timeout_s: float = Field(default=600.0, gt=0)
    balance: BalanceSpec = Field(default_factory=BalanceSpec, description="config/scale.py")

    @model_validator(mode="after")
    def _launch_xor_urls(self) -> VLLMModel:
        if (self.launch is None) == (self.urls is None):
            raise ValueError("set exactly one of 'launch' (start vLLM) or 'urls' (existing vLLM)")
        return self

    @field_validator("urls")
    @classmethod
    def _http_urls(cls, urls: list[str] | None) -> list[str] | None:
        for url in urls or []:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"'{url}' is not an http(s) URL")
        return [u.rstrip("/") for u in urls] if urls else urls


class LiteLLMModel(_Spec):
    """A hosted model reached through LiteLLM."""

    engine: Literal["litellm"]
    pricing: PricingSpec = Field(default_factory=PricingSpec)
    model: str = Field(description="a LiteLLM model string, e.g. 'openai/gpt-4o-mini'")
    api_base: str | None = None
    api_key_env: str | None = None
    timeout_s: float = Field(default=600.0, gt=0)


ModelSpec = Annotated[VLLMModel | LiteLLMModel, Field(discriminator="engine")]


class ServerSpec(_Spec):
    """The HTTP server (``gateway serve``): its address and the bounds uvicorn lacks.

    See ``gateway/admission/http_guard.py`` and docs/operations.md.
    """

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    max_header_bytes: int = Field(
        default=16_384, ge=1024, description="request line and headers; over it: 431"
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="from a request's first byte to its last header"
    )
    body_timeout_s: float = Field(default=30.0, gt=0, description="to read a whole body; 408")
    keep_alive_s: int = Field(default=5, ge=1, description="an idle keep-alive connection")
    max_connections: int | None = Field(
        default=None, ge=1, description="default: from the open-file limit (see docs)"
    )
    probe_connections: int = Field(
        default=8, ge=0, description="more connections, for GET /health and /ready only"
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names served besides loopback and the bound address; '*': any",
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="origins allowed cross-site requests (CORS)"
    )
    raise_fd_limit: bool = Field(
        default=True, description="raise the open-file soft limit to the hard limit"
    )


class LimitsSpec(_Spec):
    """Bounds on what one request may ask for, and on how much traffic the gateway takes.

    Over a request bound is a 400 (413 for the body); over a rate a 429 with Retry-After; over
    the concurrency limit a 503 with Retry-After, at once, instead of an unbounded queue.
    """

    max_body_bytes: int = Field(default=1_048_576, gt=0)
    max_n: int = Field(default=8, ge=1)
    max_tokens: int = Field(default=4096, ge=1)
    max_messages: int = Field(default=256, ge=1)
    max_chars: int = Field(default=400_000, ge=1, description="all messages' text together")
    max_concurrency: int | None = Field(
        default=512, ge=1, description="chat requests in flight (streams until they end)"
    )
    requests_per_minute: float | None = Field(
        default=None, gt=0, description="per API key (per client address without keys)"
    )
    tokens_per_minute: float | None = Field(
        default=None, gt=0, description="per API key: prompt and completion tokens"
    )
    auth_failures_per_minute: float = Field(
        default=20, gt=0, description="per client address; then 429 until it refills"
    )


class ReliabilitySpec(_Spec):
    """Deadlines, retries and cooldowns: see docs/operations.md."""

    deadline_s: float = Field(default=600.0, gt=0, description="one request, all attempts")
    stream_gap_s: float = Field(
        default=60.0, gt=0, description="a stream with no chunk for this long has stalled"
    )
    max_attempts: int = Field(default=3, ge=1, description="first try, retries and fallbacks")
    retry_budget: float = Field(
        default=0.2, ge=0, le=1, description="retries as a share of requests (10 in reserve)"
    )
    max_retry_after_s: float = Field(
        default=5.0, ge=0, description="longest upstream Retry-After the gateway waits out"
    )
    cooldown_failures: int = Field(
        default=5, ge=1, description="consecutive retryable failures that cool a variant down"
    )
    cooldown_s: float = Field(default=30.0, gt=0)
    drain_timeout_s: int = Field(
        default=30, ge=0, description="on SIGTERM, how long in-flight requests may finish"
    )


Scope = Literal["inference", "feedback", "admin"]


class KeySpec(_Spec):
    """One API key: its SHA-256 hash (``gateway keys hash``) or the variable that holds it."""

    name: str = Field(min_length=1, max_length=64)
    hash: str | None = Field(default=None, pattern=r"^sha256:[0-9a-f]{64}$")
    env: str | None = Field(default=None, description="environment variable holding the key")
    scopes: list[Scope] = Field(default=["inference", "feedback"], min_length=1)
    requests_per_minute: float | None = Field(default=None, gt=0, description="overrides limits")
    tokens_per_minute: float | None = Field(default=None, gt=0, description="overrides limits")

    @model_validator(mode="after")
    def _hash_xor_env(self) -> KeySpec:
        if (self.hash is None) == (self.env is None):
            raise ValueError("set exactly one of 'hash' (sha256:...) or 'env' (a variable name)")
        return self


class AuthSpec(_Spec):
    """API keys. None configured (and no GATEWAY_API_KEY): authentication is off."""

    keys: list[KeySpec] = Field(default_factory=list)

    @field_validator("keys")
    @classmethod
    def _unique_names(cls, keys: list[KeySpec]) -> list[KeySpec]:
        names = [k.name for k in keys]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"key name '{name}' is used twice; names must be unique")
        return keys


class SamplingSpec(_Spec):
    """A variant's sampling settings; they override what the client sent."""

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    stop: list[str] | None = Field(default=None, max_length=4)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)


class VariantSpec(_Spec):
    """A model or adapter, a pipeline and sampling settings, with a share of the traffic."""

    target: str = Field(description="a model id or an adapter name (a cascade: filled in)")
    pipeline: str = "plain"
    weight: float = Field(
        default=0.0,
        ge=0,
        le=1e6,
        allow_inf_nan=False,
        description="relative share; 0: only pinned, shadow or fallback",
    )
    params: SamplingSpec = Field(default_factory=SamplingSpec)
    cascade: list[CascadeStepSpec] | None = Field(
        default=None, description="steps (variants of the route) tried in order: config/loop.py"
    )

    @model_validator(mode="after")
    def _cascade(self) -> VariantSpec:
        if self.cascade is not None:
            check_cascade(self.cascade)
        elif self.pipeline == CASCADE_PIPELINE:
            raise ValueError(f"pipeline: '{CASCADE_PIPELINE}' is reserved; write 'cascade: [...]'")
        return self


class ShadowSpec(_Spec):
    variant: str
    sample_rate: float = Field(gt=0, le=1)


class MetricSpec(_Spec):
    type: Literal["boolean", "float"]
    higher_is_better: bool = True


class GuardrailSpec(_Spec):
    """A metric no variant may make worse than the control by more than ``margin``.

    Built in: error_rate, latency_p95 (ms), cost (per request); or any feedback metric. The
    margin is in the metric's own units (0.02 = two points of error rate, 200 = 200 ms).
    """

    margin: float = Field(default=0.0, ge=0)


class ExperimentSpec(_Spec):
    """How a route's experiment is analysed and decided (gateway/experiments/)."""

    metrics: dict[str, MetricSpec] = Field(default_factory=dict)
    primary: str | None = Field(default=None, description="the deciding metric; default: first")
    min_samples: int = Field(
        default=100,
        ge=2,
        description="units per variant before any decision: the always-valid interval's "
        "normal approximation holds from here (coverage measured in docs/experiments.md)",
    )
    alpha: float = Field(default=0.05, gt=0, lt=1)
    control: str | None = Field(default=None, description="default: the first variant")
    min_effect: float | None = Field(
        default=None,
        gt=0,
        description="the smallest difference worth finding on the primary metric: the report "
        "shows the sample it needs, and 'no_difference' once the interval rules it out",
    )
    planned_samples: int | None = Field(
        default=None,
        ge=2,
        description="units per variant for a one-look fixed-horizon test; without it the "
        "always-valid test is used, safe to read at any time",
    )
    expected_samples: int = Field(
        default=1000, ge=10, description="units per variant where the always-valid test is tightest"
    )
    guardrails: dict[str, GuardrailSpec] = Field(default_factory=dict)
    # Acted on when the decision is evaluated (GET /v1/experiments/{route}, gateway report):
    # gateway/experiments/promotion.py.
    on_decision: Literal["report", "promote"] = Field(
        default="report", description="promote: a winner gets all traffic, automatically"
    )
    on_guardrail_breach: Literal["report", "rollback"] = Field(
        default="report",
        description="rollback: a breach sends all traffic to the control (routing has no "
        "per-variant redirect)",
    )


STICKY_KEY = re.compile(r"^(user|none|header:[A-Za-z0-9-]+)$")


class RouteSpec(_Spec):
    """A public model name whose traffic is split between variants."""

    variants: dict[str, VariantSpec] = Field(min_length=1)
    sticky_key: str = Field(default="user", description="user | header:NAME | none")
    salt: str | None = Field(default=None, description="hash salt; default: the route name")
    allow_pin: bool = False
    shadow: list[ShadowSpec] = Field(default_factory=list)
    fallback: list[str] = Field(default_factory=list)
    experiment: ExperimentSpec | None = None
    capture: CaptureSpec | None = Field(default=None, description="off by default: config/loop.py")

    _fill_cascades = model_validator(mode="before")(fill_cascade_targets)

    @model_validator(mode="after")
    def _references(self) -> RouteSpec:
        if not STICKY_KEY.fullmatch(self.sticky_key):
            raise ValueError(
                f"sticky_key '{self.sticky_key}' must be 'user', 'none' or 'header:NAME'"
            )
        if sum(v.weight for v in self.variants.values()) <= 0:
            raise ValueError("variants: at least one variant needs a weight above 0")
        # Shadows, fallbacks and the control name variants: gateway.resolve checks them.
        return self


class EventsSpec(_Spec):
    """The event log: SQLite in $GATEWAY_HOME by default, PostgreSQL by URL."""

    url: str | None = Field(default=None, description="sqlite:///PATH or postgresql://...")
    durable: bool = Field(default=False, description="commit each event before answering")
    batch_size: int = Field(default=256, ge=1)
    flush_interval_s: float = Field(default=0.2, gt=0)
    max_queue: int = Field(default=100_000, ge=1)


class TelemetrySpec(_Spec):
    """OpenTelemetry traces: off unless an OTLP endpoint is set (here or in the environment)."""

    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP collector, e.g. http://collector:4318 (else "
        "OTEL_EXPORTER_OTLP_ENDPOINT); unset: no tracing",
    )
    service_name: str = Field(default="switchboard", min_length=1)
    sample_ratio: float = Field(default=1.0, ge=0, le=1, description="share of traces kept")


class AdaptersSpec(_Spec):
    """LoRA adapters: the registry folders (each holds ``<name>/adapter.yaml``), see adapters.py."""

    folders: list[str] = Field(
        default_factory=list,
        description="relative to this file; '$GATEWAY_HOME/adapters' is the gateway's home",
    )
    preload: list[str] = Field(
        default_factory=list, description="loaded into vLLM at start; others on first use"
    )


class PipelinesSpec(_Spec):
    """Prompt pipelines beyond the shipped ``prompts/``: see gateway/pipelines/loader.py."""

    folders: list[str] = Field(
        default_factory=list,
        description="relative to this file; each holds <name>/pipeline.yaml; later ones win",
    )


class GatewayConfig(_Spec):
    server: ServerSpec = Field(default_factory=ServerSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    reliability: ReliabilitySpec = Field(default_factory=ReliabilitySpec)
    auth: AuthSpec = Field(default_factory=AuthSpec)
    models: dict[str, ModelSpec] = Field(min_length=1)
    routes: dict[str, RouteSpec] = Field(default_factory=dict)
    events: EventsSpec = Field(default_factory=EventsSpec)
    adapters: AdaptersSpec = Field(default_factory=AdaptersSpec)
    pipelines: PipelinesSpec = Field(default_factory=PipelinesSpec)
    telemetry: TelemetrySpec = Field(default_factory=TelemetrySpec)
    state: StateSpec = Field(default_factory=StateSpec, description="config/scale.py")
    aliases: dict[str, str] = Field(
        default_factory=dict,
        description="another public name for a model, adapter or route (e.g. gpt-4o-mini)",
    )

    @model_validator(mode="after")
    def _route_names_are_free(self) -> GatewayConfig:
        for name in self.routes:
            if name in self.models:
                raise ValueError(
                    f"routes: '{name}' is also a model id; a public name means one thing"
                )
        return self

    # The folder relative paths in the file are taken from (None: the embedded default).
    _base_dir: Path | None = PrivateAttr(default=None)
    # Where the config came from, as its errors name it.
    _source: str = PrivateAttr(default="gateway.yaml")

    @property
    def base_dir(self) -> Path | None:
        return self._base_dir

    @property
    def source(self) -> str:
        return self._source

    @field_validator("models", "aliases")
    @classmethod
    def _model_ids(cls, models: dict[str, Any]) -> dict[str, Any]:
        for name in models:
            if not MODEL_ID.fullmatch(name):
                raise ValueError(
                    f"model id '{name}' must match {MODEL_ID.pattern} (letters, digits, . _ : / -)"
                )
        return models


def model_path(target: str, config_dir: Path | None) -> Path:
    """A launch target that is a path, relative paths taken from the config file's folder."""
    path = Path(target).expanduser()
    if not path.is_absolute() and config_dir is not None:
        path = config_dir / path
    return path
