"""Engines: what actually runs a model. ``build_engine`` turns a config entry into one."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from gateway.config.schema import (
    PACKAGED_PREFIX,
    GatewayConfig,
    LaunchSpec,
    LiteLLMModel,
    ModelSpec,
    VLLMModel,
    model_path,
)
from gateway.engines.base import Engine, EngineHealth
from gateway.engines.supervisor import VLLMSupervisor
from gateway.engines.vllm import VLLMEngine
from gateway.settings import Settings

__all__ = ["Engine", "EngineHealth", "build_engine", "build_engines", "start_engines"]


def build_engine(
    model_id: str, spec: ModelSpec, settings: Settings, base_dir: Path | None
) -> Engine:
    """Make the engine for one ``models:`` entry. Packaged models must be prepared already."""
    api_key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
    if isinstance(spec, LiteLLMModel):
        from gateway.engines.hosted import LiteLLMEngine

        return LiteLLMEngine(
            model_id=model_id,
            litellm_model=spec.model,
            api_base=spec.api_base,
            api_key_env=spec.api_key_env,
            timeout_s=spec.timeout_s,
        )
    assert isinstance(spec, VLLMModel)
    upstream = spec.upstream_model or model_id
    if spec.urls is not None:
        return VLLMEngine(
            model_id=model_id,
            upstream_model=upstream,
            urls=spec.urls,
            api_key=api_key,
            timeout_s=spec.timeout_s,
            balance=spec.balance,
        )
    launch = spec.launch
    assert launch is not None
    target, offline = launch_target(launch.model, settings, base_dir)
    # launch.replicas: that many vLLM servers, one fleet (their logs and runtime files apart).
    supervisors = [
        VLLMSupervisor(
            model_id=model_id if i == 0 else f"{model_id}-{i}",
            model=target,
            served_name=upstream,
            args=[*launch.args, *tool_args(launch, base_dir)],
            env=launch.env,
            logs_dir=settings.logs_dir,
            run_dir=settings.run_dir,
            startup_timeout_s=launch.startup_timeout_s,
            backoff_max_s=launch.restart_backoff_max_s,
            offline=offline,
        )
        for i in range(launch.replicas)
    ]
    return VLLMEngine(
        model_id=model_id,
        upstream_model=upstream,
        supervisors=supervisors,
        api_key=api_key,
        timeout_s=spec.timeout_s,
        balance=spec.balance,
    )


def launch_target(model: str, settings: Settings, base_dir: Path | None) -> tuple[str, bool]:
    """What to pass vLLM as --model, and whether it can run offline (not a hub id)."""
    from gateway.engines.packaged import packaged_model_dir

    if model.startswith(PACKAGED_PREFIX):
        return str(
            packaged_model_dir(settings.models_dir, model.removeprefix(PACKAGED_PREFIX))
        ), True
    if model.startswith(("/", "./", "../", "~")):
        return str(model_path(model, base_dir)), True
    return model, False


#: The packaged ChatML template with tools (the packaged SmolLM2's own template has none).
CHATML_TOOLS_TEMPLATE = Path(__file__).parent / "templates" / "chatml_tools.jinja"

#: ``tool_parser: auto`` for hub models: vLLM's parser for the format each family was trained to
#: emit, matched on the lower-cased model id (first match wins). Families not listed get none.
FAMILY_PARSERS: tuple[tuple[str, str], ...] = (
    ("llama-4", "llama4_pythonic"),
    ("llama-3", "llama3_json"),
    ("llama3", "llama3_json"),
    ("mistral", "mistral"),
    ("mixtral", "mistral"),
    ("qwen3-coder", "qwen3_xml"),
    ("qwen", "hermes"),
    ("hermes", "hermes"),
    ("granite", "granite"),
)


def tool_parser_for(launch: LaunchSpec) -> str | None:
    """The vLLM tool-call parser a launched model gets, or None for no tool calling."""
    if launch.tool_parser != "auto":
        return launch.tool_parser
    if launch.model.startswith(PACKAGED_PREFIX):
        return "hermes"  # with CHATML_TOOLS_TEMPLATE, which writes hermes' <tool_call> format
    name = launch.model.lower()
    return next((parser for family, parser in FAMILY_PARSERS if family in name), None)


def tool_args(launch: LaunchSpec, base_dir: Path | None) -> list[str]:
    """vLLM flags for tool calling (and the chat template it needs)."""
    args: list[str] = []
    template: Path | None = None
    if launch.chat_template is not None:
        template = model_path(launch.chat_template, base_dir)
    elif launch.model.startswith(PACKAGED_PREFIX):
        template = CHATML_TOOLS_TEMPLATE
    if template is not None:
        args += ["--chat-template", str(template)]
    parser = tool_parser_for(launch)
    if parser is not None:
        args += ["--enable-auto-tool-choice", "--tool-call-parser", parser]
    return args


async def build_engines(config: GatewayConfig, settings: Settings) -> dict[str, Engine]:
    await asyncio.to_thread(prepare_packaged_models, config, settings)
    return {
        name: build_engine(name, spec, settings, config.base_dir)
        for name, spec in config.models.items()
    }


def prepare_packaged_models(config: GatewayConfig, settings: Settings) -> None:
    """Convert packaged models that are not prepared yet (a one-time step per machine)."""
    from gateway.engines.packaged import is_prepared, prepare_model

    for spec in config.models.values():
        if (
            isinstance(spec, VLLMModel)
            and spec.launch
            and spec.launch.model.startswith(PACKAGED_PREFIX)
        ):
            name = spec.launch.model.removeprefix(PACKAGED_PREFIX)
            if not is_prepared(settings.models_dir, name):
                prepare_model(settings.models_dir, name)


async def start_engines(engines: dict[str, Engine]) -> None:
    """Start every engine at once; if one fails, stop the others and raise its error."""
    results = await asyncio.gather(*(e.start() for e in engines.values()), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        await asyncio.gather(*(e.stop() for e in engines.values()), return_exceptions=True)
        raise failures[0]
