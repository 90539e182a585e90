"""``gateway eval``: a route's variants on labelled data, offline, before any live traffic.

The heavy parts (the app, the statistics) are imported when the command runs, so that the rest
of the ``gateway`` command starts quickly.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gateway.cli.common import console, err, fail, message_of, print_error
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.evaluation.run import RunPlan

INTERRUPTED = 130


def eval_command(
    data: Annotated[Path, typer.Option("--data", help="Labelled JSONL (see README).")],
    route: Annotated[str, typer.Option("--route", help="The route whose variants to compare.")],
    variants: Annotated[
        str | None, typer.Option(help="Comma-separated variants; default: all of the route's.")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N items.")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Calls in flight at once.")] = 4,
    out: Annotated[
        Path | None,
        typer.Option(help="Run folder (results, report); default: $GATEWAY_HOME/evals/ROUTE-DATA."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="gateway.yaml; default: the embedded one.")
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="A running gateway to evaluate on, instead of in process.")
    ] = None,
    scorer: Annotated[
        str | None,
        typer.Option(
            help="mc, exact, exact:case, regex:PATTERN, json:FIELD or numeric:TOLERANCE; "
            "default: the data file's header, else mc (multiple choice) or exact."
        ),
    ] = None,
    split: Annotated[
        str, typer.Option(help="heldout (default: the fixed split's held-out side) or all.")
    ] = "heldout",
) -> None:
    """Run every item through every chosen variant (paired), then report with intervals.

    Resumable: the same command continues where an interrupted run stopped.
    """
    from gateway.cli.eval_session import EvalSession
    from gateway.errors import SwitchboardError
    from gateway.evaluation.data import read_eval_data
    from gateway.evaluation.scoring import parse_cli

    if split not in ("heldout", "all"):
        fail(f"--split is '{split}'; use heldout or all")
    # A bad --scorer or data file (ScorerError, DataError) exits 2 through the root command.
    spec = parse_cli(scorer) if scorer else None
    dataset, spec = read_eval_data(data, split="all" if split == "all" else "heldout", scorer=spec)
    wanted = [v.strip() for v in variants.split(",") if v.strip()] if variants else None
    folder = out or Settings().home / "evals" / f"{route}-{data.stem}"
    if dataset.skipped_train:
        console.print(
            f"{dataset.skipped_train} packaged items of the train split left out (the packaged "
            "adapters and exemplar banks learn from them); --split all keeps them."
        )
    session = EvalSession(
        folder, route, wanted, dataset, spec, limit=limit, concurrency=concurrency, console=console
    )
    code = 0
    try:
        asyncio.run(session.main(config, url))
    except KeyboardInterrupt:
        code = INTERRUPTED
        err.print("[yellow]interrupted:[/yellow] finished items are kept; rerun to continue.")
    except SwitchboardError as exc:
        # Caught here, not by the root command: a run that has begun still writes its report.
        # Before the plan the invocation was wrong (an unknown route, an unreachable gateway).
        print_error(message_of(exc))
        code = 1 if session.plan is not None else 2
    if session.plan is None:
        raise typer.Exit(code or 1)
    summary = _report(session.plan)
    if code == 0 and all(f["n"] and f["errors"] == f["n"] for f in summary["variants"].values()):
        code = 1  # nothing answered at all: the gateway or its engines are not working
    raise typer.Exit(code)


def _report(plan: RunPlan) -> dict[str, Any]:
    from gateway.evaluation.report import print_summary, summarise, write_reports
    from gateway.evaluation.run import load_results

    records = {v: load_results(plan.out, v) for v in plan.variants}
    summary = summarise(plan.manifest, plan.items, records)
    json_path, html_path = write_reports(plan.out, summary, records)
    print_summary(summary, console)
    errors = sum(f["errors"] for f in summary["variants"].values())
    if errors:
        console.print(f"[yellow]{errors} calls failed[/yellow]; a rerun tries them again.")
    console.print(f"wrote {json_path} and {html_path}")
    return summary
