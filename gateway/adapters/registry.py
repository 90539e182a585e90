"""The adapter registry: the folders adapters are read from, names, and checks against a config.

An adapter is a folder ``<registry folder>/<name>/`` (``adapter_manifest.py`` reads one);
``gateway.yaml`` lists the registry folders under ``adapters.folders``. Each adapter must be
servable by the config: its base a vLLM model launched with LoRA enabled, its rank within
``--max-lora-rank``, trained on the weights the config serves.

Names are the only handle a client has: they match ``ADAPTER_NAME`` (no slashes, no leading
dot), are looked up in the registry folders only, and a folder that resolves outside its
registry folder (a symlink escaping it) is refused. A path never comes from a request.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gateway.adapters.manifest import Adapter, read_adapter
from gateway.config.schema import GatewayConfig, LiteLLMModel, VLLMModel, model_path
from gateway.errors import AdapterNotFoundError, AdapterProblems, InvalidAdapterError
from gateway.settings import Settings

log = logging.getLogger(__name__)

ADAPTER_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
HOME_PREFIX = "$GATEWAY_HOME"
# vLLM's own defaults when a flag is not given (vllm/config/lora.py, 0.32.0).
VLLM_DEFAULT_MAX_LORA_RANK = 16
VLLM_DEFAULT_MAX_LORAS = 1


def check_name(name: str) -> str:
    """Refuse anything that is not a plain adapter name (paths, ``..``, upper case)."""
    if not ADAPTER_NAME.fullmatch(name):
        raise InvalidAdapterError(
            f"'{name}' is not a valid adapter name: names match {ADAPTER_NAME.pattern}.",
            param="name",
        )
    return name


# -- validation against a config --------------------------------------------------------------


@dataclass(frozen=True)
class LoRALimits:
    """What a model's vLLM accepts; ``None`` where the gateway cannot know (vLLM at URLs)."""

    enabled: bool
    max_rank: int | None
    max_loaded: int | None


def lora_limits(config: GatewayConfig, model_id: str) -> LoRALimits:
    spec = config.models[model_id]
    if isinstance(spec, LiteLLMModel):
        return LoRALimits(enabled=False, max_rank=None, max_loaded=None)
    assert isinstance(spec, VLLMModel)
    if spec.launch is None:
        return LoRALimits(enabled=True, max_rank=None, max_loaded=None)
    flags = _flags(spec.launch.args)
    max_loras = int(flags.get("--max-loras") or VLLM_DEFAULT_MAX_LORAS)
    # vLLM keeps up to --max-cpu-loras adapters registered (at least --max-loras).
    max_cpu = flags.get("--max-cpu-loras")
    return LoRALimits(
        enabled="--enable-lora" in flags,
        max_rank=int(flags.get("--max-lora-rank") or VLLM_DEFAULT_MAX_LORA_RANK),
        max_loaded=max(max_loras, int(max_cpu)) if max_cpu else max_loras,
    )


def _flags(args: Iterable[str]) -> dict[str, str]:
    """``--flag=value`` and ``--flag value`` as a mapping (vLLM also accepts underscores)."""
    found: dict[str, str] = {}
    items = list(args)
    for i, arg in enumerate(items):
        if not arg.startswith("--"):
            continue
        flag, eq, value = arg.partition("=")
        flag = flag.replace("_", "-")
        if not eq and i + 1 < len(items) and not items[i + 1].startswith("--"):
            value = items[i + 1]
        found[flag] = value
    return found


def config_problems(adapter: Adapter, config: GatewayConfig) -> list[str]:
    """Whether the config can serve this adapter: its base exists and its vLLM accepts it."""
    where = str(adapter.manifest_path)
    base = adapter.base_model
    spec = config.models.get(base)
    if spec is None:
        known = ", ".join(config.models)
        return [
            f"{where}: base_model: '{base}' is not a model of this config ({known}). Fix: add "
            f"models.{base} to gateway.yaml, or set base_model to the model it was trained on."
        ]
    if isinstance(spec, LiteLLMModel):
        return [
            f"{where}: base_model: '{base}' is a hosted (litellm) model; adapters need a vLLM "
            "model. Fix: serve the base with `engine: vllm`."
        ]
    problems: list[str] = []
    if adapter.name in config.models or adapter.name in config.routes:
        problems.append(
            f"{where}: name: '{adapter.name}' is also a model id or route; a public name means "
            "one thing. Fix: rename the adapter folder and its manifest's name."
        )
    limits = lora_limits(config, base)
    args_key = f"models.{base}.launch.args"
    if not limits.enabled:
        problems.append(
            f"{args_key}: vLLM is launched without --enable-lora, so it cannot serve adapter "
            f"'{adapter.name}'. Fix: add --enable-lora, --max-lora-rank=N and --max-loras=N."
        )
    if limits.max_rank is not None and adapter.manifest.rank > limits.max_rank:
        problems.append(
            f"{where}: rank: {adapter.manifest.rank} is above --max-lora-rank={limits.max_rank} "
            f"({args_key}). Fix: raise --max-lora-rank, or retrain with --rank "
            f"{limits.max_rank} or less."
        )
    training = adapter.manifest.training
    if training and isinstance(spec, VLLMModel) and spec.launch is not None:
        served = spec.launch.model
        if training.base_source != served:
            problems.append(
                f"{where}: training.base_source: trained on '{training.base_source}' but "
                f"models.{base}.launch.model is '{served}'. Fix: serve it on the model it was "
                "trained on, or retrain on this one."
            )
    return problems


# -- the registry -------------------------------------------------------------------------------


def registry_folders(config: GatewayConfig, settings: Settings) -> list[Path]:
    """``adapters.folders`` as absolute paths.

    Relative folders are taken from the config file's folder. The embedded default has no
    file: its relative folders are taken from the source checkout the package runs from (an
    editable install), else from the working directory (the Docker image's WORKDIR).
    ``$GATEWAY_HOME/...`` is the gateway's home (adapters trained or copied there).
    """
    folders: list[Path] = []
    for entry in config.adapters.folders:
        if entry == HOME_PREFIX or entry.startswith(HOME_PREFIX + "/"):
            folders.append(settings.home / entry.removeprefix(HOME_PREFIX).lstrip("/"))
        elif config.base_dir is not None or Path(entry).expanduser().is_absolute():
            folders.append(model_path(entry, config.base_dir))
        else:
            checkout = Path(__file__).resolve().parents[2] / entry
            folders.append(checkout if checkout.is_dir() else Path.cwd() / entry)
    return [f.resolve() for f in folders]


def _is_home(folder: Path, settings: Settings) -> bool:
    return folder.is_relative_to(settings.home.resolve())


class AdapterRegistry:
    """The adapters a config can serve, read from its registry folders.

    ``scan`` reads every folder; ``refresh`` (re)reads one name, which is how an adapter
    folder added while the gateway runs gets registered.
    """

    def __init__(self, config: GatewayConfig, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.folders = registry_folders(config, settings)
        self._adapters: dict[str, Adapter] = {}

    def get(self, name: str) -> Adapter | None:
        return self._adapters.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._adapters

    def all(self) -> list[Adapter]:
        return sorted(self._adapters.values(), key=lambda a: a.name)

    def scan(self, *, replace: bool = True) -> list[str]:
        """Read every registry folder; return the problems (an empty list when all is well).

        Adapters that validate are registered even when others do not, so a running gateway
        keeps serving what it can; at startup any problem is fatal (``load_registry``).
        ``replace=False`` only adds new names: an adapter vLLM may have loaded keeps the
        manifest it was loaded with.
        """
        problems: list[str] = []
        found: dict[str, Adapter] = {}
        for folder in self.folders:
            if not folder.is_dir():
                if not _is_home(folder, self.settings):
                    problems.append(
                        f"adapters.folders: {folder} does not exist. Fix: create it, or remove "
                        "it from the list."
                    )
                continue
            for child in sorted(folder.iterdir()):
                # Hidden folders are work in progress (training writes to .NAME.tmp-*).
                if child.name.startswith(".") or not child.is_dir():
                    continue
                try:
                    adapter = self._read(folder, child.name)
                except AdapterProblems as exc:
                    problems += exc.problems
                    continue
                other = found.get(adapter.name)
                if other is not None:
                    problems.append(
                        f"{adapter.manifest_path}: name: '{adapter.name}' is also registered by "
                        f"{other.manifest_path}. Fix: rename one of them."
                    )
                    continue
                found[adapter.name] = adapter
        if replace:
            self._adapters = found
        else:
            self._adapters = {**found, **self._adapters}
        return problems

    def refresh(self, name: str) -> Adapter:
        """(Re)read one adapter by name from the registry folders; 4xx when it cannot be."""
        check_name(name)
        for folder in self.folders:
            if not (folder / name).is_dir():
                continue
            try:
                adapter = self._read(folder, name)
            except AdapterProblems as exc:
                self._adapters.pop(name, None)
                raise InvalidAdapterError(
                    f"Adapter '{name}' cannot be served: " + " ".join(exc.problems), param="name"
                ) from None
            self._adapters[name] = adapter
            return adapter
        self._adapters.pop(name, None)
        raise AdapterNotFoundError(name)

    def _read(self, folder: Path, name: str) -> Adapter:
        if not ADAPTER_NAME.fullmatch(name):
            raise AdapterProblems(
                [
                    f"{folder / name}: '{name}' is not a valid adapter name "
                    f"({ADAPTER_NAME.pattern}). Fix: rename the folder and its manifest's name."
                ]
            )
        resolved = (folder / name).resolve()
        if resolved.parent != folder:
            # A symlink that leaves the registry folder: refused, never read.
            log.warning("adapter folder %s resolves outside %s; refused", folder / name, folder)
            raise AdapterProblems(
                [
                    f"{folder / name}: resolves to {resolved}, outside the registry folder. "
                    "Fix: copy the adapter into the folder, or add its folder to "
                    "adapters.folders."
                ]
            )
        adapter = read_adapter(resolved)
        problems = config_problems(adapter, self.config)
        if problems:
            raise AdapterProblems(problems)
        return adapter


def preload_problems(config: GatewayConfig, registry: AdapterRegistry) -> list[str]:
    problems: list[str] = []
    per_base: dict[str, int] = {}
    for name in config.adapters.preload:
        adapter = registry.get(name)
        if adapter is None:
            problems.append(
                f"adapters.preload: '{name}' is not in the registry folders. Fix: remove it, or "
                "add the folder that holds it to adapters.folders."
            )
            continue
        per_base[adapter.base_model] = per_base.get(adapter.base_model, 0) + 1
    for base, count in per_base.items():
        limit = lora_limits(config, base).max_loaded
        if limit is not None and count > limit:
            problems.append(
                f"adapters.preload: {count} adapters on '{base}', whose vLLM holds "
                f"{limit} (--max-loras). Fix: preload fewer or raise --max-loras."
            )
    return problems
