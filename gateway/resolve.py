"""Phase 2 of the configuration, in one place: everything ``gateway.yaml`` names, checked once.

``gateway config check`` and the app's lifespan both call ``resolve``; the lifespan serves what
it returns, so a config that passes the check cannot fail startup on a reference, and nothing
is scanned or loaded twice. Every problem found is reported at once, each naming the file, the
key and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.adapters.registry import AdapterRegistry, preload_problems
from gateway.config.schema import PACKAGED_PREFIX, GatewayConfig, VLLMModel, model_path
from gateway.engines.packaged import PACKAGED_MODELS
from gateway.errors import ConfigError
from gateway.pipelines.loader import Pipeline, discover, load_pipelines
from gateway.routing.cascade import cascade_problems
from gateway.settings import Settings


@dataclass(frozen=True, slots=True)
class Resolved:
    """A configuration whose every reference holds, with what it names loaded."""

    config: GatewayConfig
    #: every adapter in the registry folders, validated against its base model
    registry: AdapterRegistry
    #: every pipeline, templates compiled and exemplar banks loaded
    pipelines: dict[str, Pipeline]


def resolve(config: GatewayConfig, settings: Settings) -> Resolved:
    """Check and load what ``config`` names; a ``ConfigError`` lists every problem."""
    problems = model_problems(config) + key_problems(config)
    registry = AdapterRegistry(config, settings)
    problems += registry.scan() + preload_problems(config, registry)
    try:
        pipelines = load_pipelines(config)
    except ConfigError as exc:
        problems += exc.problems
        pipelines = {}
        # Routes are checked against the pipelines that exist, broken or not, so a broken
        # template is reported once, not again as an unknown pipeline.
        pipeline_names = {*discover(config), "plain"}
    else:
        pipeline_names = set(pipelines)
    targets = set(config.models) | {adapter.name for adapter in registry.all()}
    problems += route_problems(config, targets, pipeline_names)
    problems += cascade_problems(config, pipelines)
    problems += alias_problems(config, targets)
    if problems:
        raise ConfigError(config.source, problems)
    return Resolved(config, registry, pipelines)


def model_problems(config: GatewayConfig) -> list[str]:
    """Models: key variables set, packaged models known, model folders present."""
    problems: list[str] = []
    for name, spec in config.models.items():
        key = f"models.{name}"
        if spec.api_key_env and spec.api_key_env not in os.environ:
            problems.append(
                f"{key}.api_key_env: environment variable {spec.api_key_env} is not set. "
                f"Fix: export {spec.api_key_env}=... before starting the gateway."
            )
        if not isinstance(spec, VLLMModel) or spec.launch is None:
            continue
        target = spec.launch.model
        if target.startswith(PACKAGED_PREFIX):
            if target.removeprefix(PACKAGED_PREFIX) not in PACKAGED_MODELS:
                known = ", ".join(PACKAGED_PREFIX + k for k in PACKAGED_MODELS)
                problems.append(
                    f"{key}.launch.model: unknown packaged model '{target}'. Fix: use {known}."
                )
        elif target.startswith(("/", "./", "../", "~")):
            folder = model_path(target, config.base_dir)
            if not folder.is_dir():
                problems.append(
                    f"{key}.launch.model: folder {folder} does not exist. "
                    "Fix: point it at a model folder, or use a model hub id."
                )
    return problems


def key_problems(config: GatewayConfig) -> list[str]:
    """API keys kept in environment variables: the variables are set."""
    return [
        f"auth.keys[{i}].env: environment variable {spec.env} (key '{spec.name}') is not set. "
        f"Fix: export {spec.env}=... or use 'hash'."
        for i, spec in enumerate(config.auth.keys)
        if spec.env and not os.environ.get(spec.env)
    ]


def alias_problems(config: GatewayConfig, targets: Iterable[str]) -> list[str]:
    """Aliases: each names a model, adapter or route, and is not itself one of them."""
    callable_names = set(targets) | set(config.routes)
    problems = []
    for alias, name in config.aliases.items():
        if alias in callable_names:
            problems.append(
                f"aliases.{alias}: already the name of a model, adapter or route. "
                "Fix: remove the alias or rename it."
            )
        if name not in callable_names:
            problems.append(
                f"aliases.{alias}: '{name}' is not a model, adapter or route. "
                f"Fix: use one of {', '.join(sorted(callable_names))}."
            )
    return problems


def route_problems(
    config: GatewayConfig, targets: Iterable[str], pipelines: Iterable[str]
) -> list[str]:
    """Routes: variants name a served model or adapter and a known pipeline; fallbacks, shadows
    and the experiment's control name variants of their route."""
    known_targets, known_pipelines = set(targets), set(pipelines)
    problems = []
    for route, spec in config.routes.items():
        if route in known_targets:
            problems.append(f"routes.{route}: also the name of a model or adapter. Fix: rename it.")
        for name, variant in spec.variants.items():
            key = f"routes.{route}.variants.{name}"
            if variant.cascade is not None:
                continue  # its steps are checked by cascade_problems
            if variant.target not in known_targets:
                problems.append(
                    f"{key}.target: '{variant.target}' is not a model or adapter. "
                    f"Fix: use one of {', '.join(sorted(known_targets))}."
                )
            if variant.pipeline not in known_pipelines:
                problems.append(
                    f"{key}.pipeline: '{variant.pipeline}' is not a pipeline. "
                    f"Fix: use one of {', '.join(sorted(known_pipelines))}."
                )
        named = [(f"shadow[{i}].variant", s.variant) for i, s in enumerate(spec.shadow)]
        named += [(f"fallback[{i}]", name) for i, name in enumerate(spec.fallback)]
        if spec.experiment and spec.experiment.control:
            named.append(("experiment.control", spec.experiment.control))
        for where, name in named:
            if name not in spec.variants:
                problems.append(
                    f"routes.{route}.{where}: '{name}' is not a variant of this route. "
                    f"Fix: use one of {', '.join(spec.variants)}."
                )
    return problems
