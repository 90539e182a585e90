"""``gateway adapters``: list, show, train, and load/unload on a running gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import yaml
from rich.markup import escape
from rich.table import Table

from gateway.adapters.registry import AdapterRegistry
from gateway.cli.common import console, err, fail, load_config_or_exit
from gateway.settings import Settings

adapters_app = typer.Typer(
    help="LoRA adapters: list, show, train; load and unload on a running gateway.",
    no_args_is_help=True,
)

DEFAULT_URL = "http://127.0.0.1:8080"
ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="gateway.yaml; default: the embedded one.")
]
UrlOption = Annotated[str, typer.Option("--url", help="The running gateway.")]


def _registry(config: Path | None) -> AdapterRegistry:
    # Phase 1 only (no resolve): one broken adapter must not stop listing the others.
    registry = AdapterRegistry(load_config_or_exit(config), Settings())
    for problem in registry.scan():
        err.print("[yellow]problem:[/yellow]", escape(problem), highlight=False)
    return registry


@adapters_app.command("list")
def list_adapters(
    config: ConfigOption = None,
    url: Annotated[
        str | None, typer.Option("--url", help="Ask this running gateway (shows what is loaded).")
    ] = None,
) -> None:
    """The adapters in the config's registry folders (or a running gateway's, with --url)."""
    table = Table("name", "base model", "rank", "state" if url else "created", "description")
    if url:
        for row in _call("GET", url, "/v1/adapters")["data"]:
            table.add_row(
                row["id"], row["base_model"], str(row["rank"]), row["state"], row["description"]
            )
    else:
        for adapter in _registry(config).all():
            m = adapter.manifest
            table.add_row(adapter.name, m.base_model, str(m.rank), m.created, m.description)
    console.print(table)


@adapters_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="The adapter's name.")],
    config: ConfigOption = None,
) -> None:
    """An adapter's manifest and where its files are."""
    adapter = AdapterRegistry(load_config_or_exit(config), Settings()).refresh(name)
    console.print(f"# {adapter.manifest_path}\n# weights: {adapter.weights_dir}", markup=False)
    console.print(
        yaml.safe_dump(adapter.manifest.model_dump(mode="json"), sort_keys=False),
        highlight=False,
        markup=False,
    )


@adapters_app.command("load")
def load(name: Annotated[str, typer.Argument()], url: UrlOption = DEFAULT_URL) -> None:
    """Load an adapter into a running gateway's vLLM (registers a folder added since start)."""
    row = _call("POST", url, f"/v1/adapters/{name}/load")
    took = row.get("last_load_s")
    console.print(
        f"{row['id']}: {row['state']}" + (f" ({took:.2f} s)" if took else ""), markup=False
    )


@adapters_app.command("unload")
def unload(name: Annotated[str, typer.Argument()], url: UrlOption = DEFAULT_URL) -> None:
    """Unload an adapter and take it out of service until it is loaded again."""
    row = _call("POST", url, f"/v1/adapters/{name}/unload")
    console.print(f"{row['id']}: {row['state']}", markup=False)


def _call(method: str, url: str, path: str) -> dict[str, Any]:
    # The name goes into the path escaped, so it is always one segment.
    try:
        resp = httpx.request(method, url.rstrip("/") + _quote_path(path), timeout=600)
    except httpx.HTTPError as exc:
        fail(f"cannot reach the gateway at {url}: {exc}", 1)
    try:
        body: dict[str, Any] = resp.json()
    except ValueError:
        body = {}
    if resp.status_code != 200:
        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
        fail(f"HTTP {resp.status_code}: {message or resp.text[:300]}", 1)
    return body


def _quote_path(path: str) -> str:
    from urllib.parse import quote

    return "/".join(quote(part, safe="") for part in path.split("/"))


@adapters_app.command("train")
def train(
    base: Annotated[str, typer.Option(help="A model id of the config to train on.")],
    data: Annotated[
        Path, typer.Option(help="JSONL: OpenAI fine-tuning chat format, or labelled MC items.")
    ],
    out: Annotated[Path, typer.Option(help="The adapter folder to write: adapters/NAME.")],
    rank: Annotated[int, typer.Option(help="LoRA rank (vLLM's --max-lora-rank bounds it).")] = 8,
    alpha: Annotated[int, typer.Option(help="LoRA alpha (scale = alpha / rank).")] = 16,
    epochs: Annotated[
        float, typer.Option(help="Passes over the data (ignored with --max-steps).")
    ] = 1.0,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 2e-4,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps.")] = None,
    batch_size: Annotated[int, typer.Option(help="Examples per step.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed for the split, shuffling and init.")] = 0,
    val_fraction: Annotated[float, typer.Option(help="Share held out for validation loss.")] = 0.1,
    max_length: Annotated[int, typer.Option(help="Tokens per example at most.")] = 2048,
    description: Annotated[str, typer.Option(help="For the manifest.")] = "",
    force: Annotated[bool, typer.Option(help="Replace an existing adapter folder.")] = False,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads; default: all cores but one (vLLM's).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Train a LoRA adapter with peft and write it with its manifest."""
    from gateway.adapters.training import TrainOptions
    from gateway.adapters.training import train as run_training

    options = TrainOptions(
        base=base,
        data=data,
        out=out,
        rank=rank,
        alpha=alpha,
        epochs=epochs,
        lr=lr,
        max_steps=max_steps,
        batch_size=batch_size,
        seed=seed,
        val_fraction=val_fraction,
        max_length=max_length,
        description=description,
        force=force,
        config=str(config) if config else None,
        threads=threads,
    )
    # Phase 1 only: training one adapter must not wait for the others to be valid. Bad data
    # exits 2, a failed run 1 (their classes say so; the root command prints them).
    result = run_training(options, load_config_or_exit(config), Settings(), err)
    size = sum(p.stat().st_size for p in result.out.iterdir()) / 1e6
    record = result.manifest.training
    assert record is not None
    console.print(
        f"wrote {result.out} ({size:.1f} MB): {record.steps} steps in {record.duration_s:g} s, "
        f"validation loss {record.val_loss_before} -> {record.val_loss_after}",
        markup=False,
    )


@adapters_app.command("distill")
def distill(
    out: Annotated[Path, typer.Option(help="The student adapter folder: adapters/NAME.")],
    teacher: Annotated[
        str | None, typer.Option(help="ROUTE:VARIANT whose answers teach (e.g. medqa:prompted).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="Unlabelled questions (JSONL: question, options).")
    ] = None,
    from_capture: Annotated[
        str | None, typer.Option(help="Read this route's captured answers instead of asking.")
    ] = None,
    min_confidence: Annotated[
        float, typer.Option(min=0, max=1, help="Keep answers whose vote share reaches this.")
    ] = 0.6,
    with_reasoning: Annotated[
        bool,
        typer.Option("--with-reasoning/--answer-only", help="Train on the teacher's reasoning."),
    ] = False,
    base: Annotated[
        str | None, typer.Option(help="The student's base model; default: the teacher's target.")
    ] = None,
    split: Annotated[
        str, typer.Option(help="train (default: skip held-out items) or all.")
    ] = "train",
    max_steps: Annotated[int | None, typer.Option(help="Training steps at most.")] = None,
    epochs: Annotated[float, typer.Option(help="Passes over the kept answers.")] = 1.0,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 2e-4,
    batch_size: Annotated[int, typer.Option(help="Examples per step.")] = 8,
    concurrency: Annotated[int, typer.Option(min=1, help="Teacher calls in flight.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed for training.")] = 0,
    force: Annotated[bool, typer.Option(help="Replace an existing adapter folder.")] = False,
    config: ConfigOption = None,
) -> None:
    """Distil a teacher variant's confident answers into a LoRA student (no gold labels read)."""
    from gateway.cli.distill_session import run_distill

    if (data is None) == (from_capture is None):
        fail("give exactly one of --data QUESTIONS.jsonl or --from-capture ROUTE")
    if data is not None and teacher is None:
        fail("--data needs --teacher ROUTE:VARIANT")
    if split not in ("train", "all"):
        fail(f"--split is '{split}'; use train or all")
    run_distill(
        out=out, teacher=teacher, data=data, from_capture=from_capture,
        min_confidence=min_confidence, style="with-reasoning" if with_reasoning else "answer-only",
        base=base, split=split, max_steps=max_steps, epochs=epochs, lr=lr,
        batch_size=batch_size, concurrency=concurrency, seed=seed, force=force, config=config,
    )  # fmt: skip
