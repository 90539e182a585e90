"""``gateway pipelines ...`` and ``gateway exemplars ...``: prompt pipelines and their banks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from gateway.cli.common import console, err, fail, load_config_or_exit
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.config.schema import GatewayConfig
    from gateway.datasets import MCItem
    from gateway.engines.base import Engine
    from gateway.pipelines.exemplars import Attempt
    from gateway.pipelines.loader import Pipeline

pipelines_app = typer.Typer(help="List prompt pipelines.", no_args_is_help=True)
exemplars_app = typer.Typer(
    help="Build exemplar banks for few-shot pipelines.", no_args_is_help=True
)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="gateway.yaml to use; default: the embedded default."),
]


@pipelines_app.command("list")
def pipelines_list(config: ConfigOption = None) -> None:
    """The pipelines a config serves, with their steps."""
    from gateway.pipelines.loader import load_pipelines

    pipelines = load_pipelines(load_config_or_exit(config))
    for name, pipeline in sorted(pipelines.items()):
        spec = pipeline.spec
        steps = ["parse"] if spec.parse and spec.render else []
        if spec.retrieve:
            steps.append(f"retrieve k={spec.retrieve.k} ({len(pipeline.bank or [])} exemplars)")
        if spec.render:
            steps.append("render")
            steps.append("generate" + (f" +fallback {spec.generate.fallback}"))
        if spec.ensemble.kind != "none":
            steps.append(f"{spec.ensemble.kind} k={spec.ensemble.k}")
        console.print(f"{name}\t{' -> '.join(steps) or 'pass-through'}\t{spec.description}")


@exemplars_app.command("build")
def exemplars_build(
    pipeline: Annotated[str, typer.Option("--pipeline", help="Pipeline whose bank to build.")],
    model: Annotated[str, typer.Option("--model", help="Model (or, with --url, any name).")],
    data: Annotated[
        Path, typer.Option("--data", help="Labelled multiple-choice JSONL (training items used).")
    ],
    limit: Annotated[
        int | None, typer.Option(min=1, help="Use the first N training items only.")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight at once.")] = 8,
    url: Annotated[
        str | None,
        typer.Option(
            help="A running gateway or vLLM (http://host:port); default: start the "
            "config's engine for --model in this process."
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Self-generated chain of thought: keep the model's reasoning where it reaches the gold."""
    from gateway import datasets
    from gateway.pipelines import exemplars
    from gateway.pipelines.loader import discover, load_pipeline
    from gateway.pipelines.retrieval import SentenceTransformerEmbedder

    started = time.monotonic()
    # Not resolved (phase 1 only): phase 2 would refuse the config for the very bank this
    # command builds.
    cfg = load_config_or_exit(config)
    folder = discover(cfg).get(pipeline)
    if folder is None:
        fail(f"no pipeline '{pipeline}' (see `gateway pipelines list`)")
    spec = load_pipeline(pipeline, folder, with_bank=False)
    if spec.spec.retrieve is None or spec.spec.render is None:
        fail(f"the pipeline '{pipeline}' does not retrieve exemplars")
    items, skipped = exemplars.training_items(datasets.read_items(data), limit)
    if skipped:
        err.print(f"skipping {skipped} held-out items: exemplar banks take training items only")
    if not items:
        fail(f"{data} has no training items", 1)

    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("kept {task.fields[kept]}"),
        TimeElapsedColumn(),
        console=err,
    ) as progress:
        task = progress.add_task(f"{pipeline} on {model}", total=len(items), kept=0)
        kept = 0

        def done(result: exemplars.Attempt) -> None:
            nonlocal kept
            kept += result.kept
            progress.update(task, advance=1, kept=kept)

        attempts = asyncio.run(
            _generate(cfg, spec, model, url, items, concurrency=concurrency, on_done=done)
        )
    failed = [a for a in attempts if a.error is not None]
    if failed and len(failed) == len(attempts):
        fail(f"every request failed, e.g.: {failed[0].error}", 1)
    meta = exemplars.build_meta(
        pipeline=pipeline,
        model=model,
        data=data,
        limit=limit,
        concurrency=concurrency,
        total=len(items),
        skipped_heldout=skipped,
        started=started,
    )
    with err.status("embedding the kept questions"):
        jsonl, npy, count = exemplars.write(
            spec, attempts, SentenceTransformerEmbedder(), meta=meta
        )
    answered = sum(a.letter is not None for a in attempts)
    console.print(
        f"kept {count} of {len(items)} training questions ({answered} answered with a letter, "
        f"{len(failed)} failed requests); wrote {jsonl} and {npy} "
        f"in {time.monotonic() - started:.0f} s"
    )


async def _generate(
    cfg: GatewayConfig,
    pipeline: Pipeline,
    model: str,
    url: str | None,
    items: list[MCItem],
    *,
    concurrency: int,
    on_done: Callable[[Attempt], None],
) -> list[Attempt]:
    """Run the model over the items: at ``url``, or on the config's engine started here."""
    from gateway.engines.factory import build_engine, prepare_packaged_models
    from gateway.engines.target import base_target
    from gateway.engines.vllm import VLLMEngine
    from gateway.pipelines.exemplars import generate

    engine: Engine
    if url is not None:
        engine = VLLMEngine(model_id=model, upstream_model=model, urls=[url.rstrip("/")])
    else:
        spec = cfg.models.get(model)
        if spec is None:
            fail(
                f"'{model}' is not a model of the config ({', '.join(cfg.models)}); "
                "for an adapter or a route, pass --url of a gateway"
            )
        settings = Settings()
        await asyncio.to_thread(prepare_packaged_models, cfg, settings)
        engine = build_engine(model, spec, settings, cfg.base_dir)
    await engine.start()
    try:
        target = base_target(model, engine)
        return await generate(pipeline, target, items, concurrency=concurrency, on_done=on_done)
    finally:
        await engine.stop()
