"""Reading ``gateway.yaml`` (phase 1): YAML syntax and the schema, errors naming key and fix.

Nothing here looks past the file: phase 2, the references it makes, is ``gateway.resolve``.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.config.schema import GatewayConfig
from gateway.errors import ConfigError

DEFAULT_CONFIG_NAME = "embedded default (gateway/defaults/gateway.yaml)"


def load_config(path: Path | None) -> GatewayConfig:
    """Read ``path`` (or the embedded default when None) and validate its shape (phase 1).

    What it names (models, adapters, pipelines, route targets) is checked by ``resolve``.
    """
    if path is None:
        source = DEFAULT_CONFIG_NAME
        text = resources.files("gateway").joinpath("defaults/gateway.yaml").read_text("utf-8")
    else:
        source = str(path)
        try:
            text = path.read_text("utf-8")
        except FileNotFoundError:
            raise ConfigError(
                source, ["file not found; pass an existing file to --config"]
            ) from None
        except OSError as exc:
            raise ConfigError(source, [f"cannot read the file: {exc.strerror}"]) from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                source, [f"byte {exc.start} is not UTF-8. Fix: save the file as UTF-8."]
            ) from None
    config = parse_config(text, source)
    config._base_dir = path.parent.resolve() if path else None
    return config


def parse_config(text: str, source: str) -> GatewayConfig:
    """Phase 1: YAML syntax and the schema."""
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(source, ["the YAML is nested too deeply to read"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [f"{where}YAML syntax error: {problem}"]) from None
    if not isinstance(data, Mapping):
        raise ConfigError(source, ["the top level must be a mapping with a 'models' key"])
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [_describe(err) for err in exc.errors()]) from None
    config._source = source
    return config


def _describe(err: Mapping[str, Any]) -> str:
    """One pydantic error as 'key.path: problem. Fix: ...'."""
    # Pydantic puts the union's tag after a model id (models.NAME.vllm.urls); only that goes.
    parts = list(err["loc"])
    if len(parts) > 2 and parts[0] == "models" and parts[2] in ("vllm", "litellm"):
        del parts[2]
    loc = ".".join(str(part) for part in parts)
    kind = err["type"]
    key = loc or "(top level)"
    if kind == "extra_forbidden":
        return f"{key}: unknown key. Fix: remove it or check its spelling."
    if kind == "missing":
        return f"{key}: required key is missing. Fix: add it."
    if kind == "union_tag_invalid":
        engine = err["input"].get("engine")
        return f"{key}.engine: '{engine}' is not an engine. Fix: use 'vllm' or 'litellm'."
    if kind == "union_tag_not_found":
        return f"{key}: no 'engine' key. Fix: add 'engine: vllm' or 'engine: litellm'."
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{key}: {message}."
