"""``gateway.yaml``'s schema: every section, with the checks that need nothing but the file.

``config.loader`` reads a file into these models (phase 1); ``gateway.resolve`` checks what they
name against the machine and the other sections (phase 2).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from gateway.config.base import Spec
from gateway.config.routes import RouteSpec
from gateway.config.scale import BalanceSpec, StateSpec

PACKAGED_PREFIX = "packaged:"
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


class LaunchSpec(Spec):
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


class PricingSpec(Spec):
    """Token prices for cost figures in events, reports and evaluations (any currency)."""

    prompt_per_1m: float = Field(default=0.0, ge=0)
    completion_per_1m: float = Field(default=0.0, ge=0)

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float:
        return (
            (prompt_tokens or 0) * self.prompt_per_1m
            + (completion_tokens or 0) * self.completion_per_1m
        ) / 1e6


class VLLMModel(Spec):
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


class LiteLLMModel(Spec):
    """A hosted model reached through LiteLLM."""

    engine: Literal["litellm"]
    pricing: PricingSpec = Field(default_factory=PricingSpec)
    model: str = Field(description="a LiteLLM model string, e.g. 'openai/gpt-4o-mini'")
    api_base: str | None = None
    api_key_env: str | None = None
    timeout_s: float = Field(default=600.0, gt=0)


ModelSpec = Annotated[VLLMModel | LiteLLMModel, Field(discriminator="engine")]


class ServerSpec(Spec):
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


class LimitsSpec(Spec):
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


class ReliabilitySpec(Spec):
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


class KeySpec(Spec):
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


class AuthSpec(Spec):
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


class EventsSpec(Spec):
    """The event log: SQLite in $GATEWAY_HOME by default, PostgreSQL by URL."""

    url: str | None = Field(default=None, description="sqlite:///PATH or postgresql://...")
    durable: bool = Field(default=False, description="commit each event before answering")
    batch_size: int = Field(default=256, ge=1)
    flush_interval_s: float = Field(default=0.2, gt=0)
    max_queue: int = Field(default=100_000, ge=1)


class TelemetrySpec(Spec):
    """OpenTelemetry traces: off unless an OTLP endpoint is set (here or in the environment)."""

    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP collector, e.g. http://collector:4318 (else "
        "OTEL_EXPORTER_OTLP_ENDPOINT); unset: no tracing",
    )
    service_name: str = Field(default="switchboard", min_length=1)
    sample_ratio: float = Field(default=1.0, ge=0, le=1, description="share of traces kept")


class AdaptersSpec(Spec):
    """LoRA adapters: the registry folders (each holds ``<name>/adapter.yaml``), see adapters.py."""

    folders: list[str] = Field(
        default_factory=list,
        description="relative to this file; '$GATEWAY_HOME/adapters' is the gateway's home",
    )
    preload: list[str] = Field(
        default_factory=list, description="loaded into vLLM at start; others on first use"
    )


class PipelinesSpec(Spec):
    """Prompt pipelines beyond the shipped ``prompts/``: see gateway/pipelines/loader.py."""

    folders: list[str] = Field(
        default_factory=list,
        description="relative to this file; each holds <name>/pipeline.yaml; later ones win",
    )


class GatewayConfig(Spec):
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
