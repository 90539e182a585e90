"""One ``gateway adapters distill`` run: the teacher's answers (asked in process with progress
bars, or read from captures), the filter, then training and the lineage in the manifest."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gateway.adapters import distill as d
from gateway.cli.common import console, err, fail, load_config_or_exit
from gateway.cli.eval_session import in_process_backend
from gateway.config.schema import GatewayConfig
from gateway.settings import Settings


def run_distill(
    *,
    out: Path,
    teacher: str | None,
    data: Path | None,
    from_capture: str | None,
    min_confidence: float,
    style: d.Style,
    base: str | None,
    split: str,
    max_steps: int | None,
    epochs: float,
    lr: float,
    batch_size: int,
    concurrency: int,
    seed: int,
    force: bool,
    config: Path | None,
) -> None:
    from gateway.adapters.training import TrainOptions, train

    cfg = load_config_or_exit(config)
    settings = Settings()
    if out.exists() and not force:
        fail(f"{out} exists; pass --force to replace it")
    held_out = 0
    if data is not None:
        assert teacher is not None
        route, teacher_variant = d.parse_teacher(teacher)
        variant: str | None = teacher_variant
        questions, held_out = d.train_side(d.read_questions(data), split)
        if held_out:
            console.print(f"{held_out} held-out questions left out (--split all keeps them)")
        answers = asyncio.run(_ask(cfg, settings, teacher, questions, out, concurrency))
        ordered = [answers[q.id] for q in questions if q.id in answers]
        source: dict[str, Any] = {"questions": str(data), "split": split}
    else:
        assert from_capture is not None
        route, variant = from_capture, d.parse_teacher(teacher)[1] if teacher else None
        ordered = _captured(cfg, settings, from_capture, variant)
        source = {"capture": from_capture}
    student = d.student_data(ordered, min_confidence, style)
    train_file = out.with_name(f"{out.name}.distill.jsonl")
    digest = d.write_student_data(train_file, student)
    console.print(
        f"kept {len(student.kept)} of {len(ordered)} teacher answers "
        f"(dropped: {student.dropped or 'none'}); training on {train_file}"
    )
    base_model = base or _teacher_base(cfg, route, variant)
    options = TrainOptions(
        base=base_model, data=train_file, out=out, max_steps=max_steps, epochs=epochs, lr=lr,
        batch_size=batch_size, seed=seed, force=force, config=str(config) if config else None,
        description=f"Distilled from {route}:{variant or '*'} ({style}, vote share >= "
        f"{min_confidence:g}): {len(student.kept)} answers, no gold labels",
    )  # fmt: skip
    result = train(options, cfg, settings, err)
    d.record_lineage(
        out,
        {
            "teacher": f"{route}:{variant}" if variant else route,
            **source,
            "filter": {"min_confidence": min_confidence, "confidence": "vote_share"},
            "style": style,
            "asked": len(ordered),
            "kept": len(student.kept),
            "dropped": student.dropped,
            "held_out_skipped": held_out,
            "data": {"file": str(train_file), "sha256": digest, "rows": len(student.examples)},
            "teacher_cache": str(d.cache_path(out)) if data is not None else None,
            "gold_labels_read": False,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    record = result.manifest.training
    assert record is not None
    console.print(
        f"wrote {out}: {record.steps} steps, validation loss {record.val_loss_before} -> "
        f"{record.val_loss_after}; lineage under 'distillation' in its manifest",
        markup=False,
    )


async def _ask(
    cfg: GatewayConfig,
    settings: Settings,
    teacher: str,
    questions: list[d.Question],
    out: Path,
    concurrency: int,
) -> dict[str, d.TeacherAnswer]:
    progress = Progress(
        TextColumn("teacher {task.fields[name]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("cached {task.fields[cached]} kept-able {task.fields[sure]}"),
        TimeElapsedColumn(),
        console=err,
    )
    counts = {"cached": 0, "sure": 0}
    task = progress.add_task("teacher", total=len(questions), name=teacher, cached=0, sure=0)

    def on_answer(got: d.TeacherAnswer, cached: bool) -> None:
        counts["cached"] += cached
        counts["sure"] += got.answer is not None
        progress.update(task, advance=1, cached=counts["cached"], sure=counts["sure"])

    cache = d.cache_path(out)
    if len(d.load_cache(cache, teacher)) >= len(questions):
        return d.load_cache(cache, teacher)  # every answer cached: no engine to start
    async with in_process_backend(cfg, settings, err) as backend:
        with progress:
            return await d.ask_teacher(
                backend, teacher, questions, cache, concurrency=concurrency, on_answer=on_answer
            )


def _captured(
    cfg: GatewayConfig, settings: Settings, route: str, variant: str | None
) -> list[d.TeacherAnswer]:
    from gateway.events.capture_export import CaptureFilter, select_captures
    from gateway.events.stores import open_store

    store = open_store(cfg.events.url, settings.home / "events.db")
    try:
        rows = select_captures(store, CaptureFilter(route, variant))
    finally:
        store.close()
    if not rows:
        fail(
            f"no captured answers of route '{route}'" + (f" variant '{variant}'" if variant else "")
        )
    return d.from_captures(rows)


def _teacher_base(cfg: GatewayConfig, route: str, variant: str | None) -> str:
    spec = cfg.routes.get(route)
    target = spec.variants[variant].target if spec and variant in spec.variants else None
    if target not in cfg.models:
        fail("--base: give the student's base model (a model id of the config)")
    assert target is not None
    return target
