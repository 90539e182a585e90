"""Offline evaluation: every item through every chosen variant, paired, resumable.

A run lives in its output folder:

- ``run.json``: the run's id, route, data fingerprint, scorer and each variant's settings;
- ``results/<variant>.jsonl``: one record per finished item, appended (and fsynced) as soon
  as the item is scored, so Ctrl-C or a crash loses at most the calls in flight;
- ``report.json`` and ``report.html``: written from the records (eval_report.py).

Running the same command again continues: items with a record are skipped, items whose call
failed are tried again. The run keeps its id, so its events in the event log stay one run.
Work is handed out item by item across the variants, so a partial run stays paired.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from gateway.errors import EvalError
from gateway.evaluation.backends import Backend, Outcome, VariantInfo
from gateway.evaluation.data import EvalData, EvalItem
from gateway.evaluation.scoring import ScorerSpec, score

MANIFEST = "run.json"
RESULTS = "results"


@dataclass(frozen=True)
class RunPlan:
    out: Path
    run_id: str
    route: str
    variants: list[str]
    items: list[EvalItem]
    scorer: ScorerSpec
    manifest: dict[str, Any]


def choose_variants(available: dict[str, VariantInfo], wanted: Sequence[str] | None) -> list[str]:
    if not wanted:
        return list(available)
    unknown = [v for v in wanted if v not in available]
    if unknown:
        raise EvalError(
            f"no variant {', '.join(repr(v) for v in unknown)} in the route; "
            f"it has {', '.join(available)}"
        )
    if len(set(wanted)) != len(wanted):
        raise EvalError("--variants names a variant twice")
    return list(wanted)


def plan_run(
    out: Path,
    route: str,
    variants: dict[str, VariantInfo],
    chosen: list[str],
    data: EvalData,
    scorer: ScorerSpec,
    *,
    limit: int | None,
    target: str,
) -> RunPlan:
    """Start a run in ``out``, or continue the one there if it is the same evaluation.

    Items a chosen variant was trained or prompted on are left out for every variant (the
    comparison stays paired), and counted per variant in the manifest's ``data.left_out``.
    """
    unseen, learned = leave_out_learned(data.items, variants, chosen)
    items = unseen[:limit] if limit is not None else unseen
    fingerprints = {name: variants[name].fingerprint() for name in chosen}
    path = out / MANIFEST
    previous = _read_manifest(path)
    if previous is not None:
        _check_same(previous, route, data, scorer, fingerprints, out)
        run_id = str(previous["run_id"])
        created = previous["created"]
        fingerprints = {**previous.get("variants", {}), **fingerprints}
    else:
        run_id = f"eval-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        created = time.time()
    manifest = {
        "run_id": run_id,
        "route": route,
        "created": created,
        "updated": time.time(),
        "gateway": target,
        "data": {
            "path": str(data.path),
            "sha256": data.sha256,
            "items": len(items),
            "left_out": {
                "train_split": data.skipped_train,
                "learned": learned,
                "items": data.skipped_train + len(data.items) - len(unseen),
            },
            "notes": sorted({n for name in chosen for n in variants[name].learned.notes}),
        },
        "scorer": scorer.describe(),
        "variants": fingerprints,
        "chosen": chosen,
    }
    _write_json(path, manifest)
    return RunPlan(out, run_id, route, chosen, items, scorer, manifest)


def leave_out_learned(
    items: Sequence[EvalItem], variants: dict[str, VariantInfo], chosen: Sequence[str]
) -> tuple[list[EvalItem], dict[str, int]]:
    """The items no chosen variant learned from, and per variant how many it had learned."""
    learned = {name: variants[name].learned.ids for name in chosen}
    counts = dict.fromkeys(chosen, 0)
    kept: list[EvalItem] = []
    for item in items:
        ids = item.content_ids
        seen_by = [name for name, known in learned.items() if not ids.isdisjoint(known)]
        for name in seen_by:
            counts[name] += 1
        if not seen_by:
            kept.append(item)
    if items and not kept:
        by = ", ".join(f"{name} ({count})" for name, count in counts.items() if count)
        raise EvalError(
            f"every item of the data was trained or prompted on by an evaluated variant: {by}. "
            "Fix: evaluate on items they never saw, or choose other --variants."
        )
    return kept, counts


def _read_manifest(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise EvalError(f"{path}: unreadable ({exc}); remove it or choose another --out") from None
    if not isinstance(data, dict) or "run_id" not in data:
        raise EvalError(f"{path}: not a run manifest; remove it or choose another --out")
    return data


def _check_same(
    previous: dict[str, Any],
    route: str,
    data: EvalData,
    scorer: ScorerSpec,
    fingerprints: dict[str, Any],
    out: Path,
) -> None:
    """Cached results are reused only for the same route, data, scorer and variant settings."""
    fix = f"Fix: choose another --out, or delete {out} to start over."
    if previous.get("route") != route:
        raise EvalError(
            f"{out} holds a run of route '{previous.get('route')}', not '{route}'. {fix}"
        )
    if previous.get("data", {}).get("sha256") != data.sha256:
        raise EvalError(f"{out} holds a run on different data (the file changed). {fix}")
    if previous.get("scorer") != scorer.describe():
        raise EvalError(f"{out} holds a run scored with {previous.get('scorer')}. {fix}")
    for name, fingerprint in fingerprints.items():
        before = previous.get("variants", {}).get(name)
        if before is not None and before != fingerprint:
            raise EvalError(
                f"variant '{name}' changed since {out} was started ({before} -> {fingerprint}); "
                f"its cached results would mix settings. Fix: choose another --out, or delete "
                f"{results_path(out, name)}."
            )


# -- the result cache ---------------------------------------------------------------------------


def results_path(out: Path, variant: str) -> Path:
    # Variant names are YAML keys: keep file names to a safe alphabet.
    return out / RESULTS / f"{re.sub(r'[^A-Za-z0-9._-]', '_', variant)}.jsonl"


def load_results(out: Path, variant: str) -> dict[str, dict[str, Any]]:
    """Finished records by item id; the last record of an item wins.

    A line cut short by a hard kill is skipped (its item is simply run again).
    """
    path = results_path(out, variant)
    found: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return found
    for line in path.read_text("utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("item"), str):
            found[record["item"]] = record
    return found


class _Appender:
    """One append-only JSONL file per variant; every record is flushed and fsynced."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self._files: dict[str, IO[str]] = {}

    def write(self, variant: str, record: dict[str, Any]) -> None:
        handle = self._files.get(variant)
        if handle is None:
            path = results_path(self.out, variant)
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = self._files[variant] = path.open("a", encoding="utf-8")
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()


# -- running ------------------------------------------------------------------------------------


def pending(plan: RunPlan) -> list[tuple[EvalItem, str]]:
    """(item, variant) pairs still to run, item by item so partial results stay paired."""
    done = {v: load_results(plan.out, v) for v in plan.variants}
    return [
        (item, variant)
        for item in plan.items
        for variant in plan.variants
        if done[variant].get(item.id, {}).get("status") != "ok"
    ]


async def run(
    plan: RunPlan,
    backend: Backend,
    *,
    concurrency: int = 4,
    on_result: Callable[[str, dict[str, Any]], None] | None = None,
) -> int:
    """Run what is pending; return how many records were written.

    Cancellation (Ctrl-C) stops the calls in flight; every record already written stays.
    """
    queue = deque(pending(plan))
    appender = _Appender(plan.out)
    written = 0

    async def worker() -> None:
        nonlocal written
        while queue:
            item, variant = queue.popleft()
            record = await evaluate_item(plan, backend, item, variant)
            appender.write(variant, record)
            written += 1
            if on_result is not None:
                on_result(variant, record)

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(max(1, min(concurrency, len(queue)))):
                group.create_task(worker())
    except BaseExceptionGroup as failure:
        raise failure.exceptions[0] from None
    finally:
        appender.close()
    return written


async def evaluate_item(
    plan: RunPlan, backend: Backend, item: EvalItem, variant: str
) -> dict[str, Any]:
    outcome = await backend.call(plan.route, variant, item.request(plan.route), plan.run_id)
    record = record_of(plan.scorer, item, variant, outcome)
    if outcome.status == "ok" and outcome.inference_id is not None:
        await backend.score(plan.run_id, outcome.inference_id, bool(record["correct"]))
    return record


def record_of(scorer: ScorerSpec, item: EvalItem, variant: str, outcome: Outcome) -> dict[str, Any]:
    """One result line. A failed call is a wrong answer (and counted as an error)."""
    if outcome.status == "ok":
        result = score(
            scorer, outcome.reply, item.expected, extracted=outcome.answer, options=item.options
        )
        answer, correct = result.answer, result.correct
    else:
        answer, correct = None, False
    return {
        "item": item.id,
        "variant": variant,
        "expected": item.expected,
        **outcome.to_json(),
        # what the pipeline extracted, beside what the scorer read (they differ for non-mc)
        "extracted": outcome.answer,
        "answer": answer,
        "correct": correct,
        "ts": time.time(),
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically: a reader never sees half a file, even if the run is killed meanwhile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
