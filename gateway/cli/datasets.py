"""``gateway datasets export``: captured inferences as fine-tuning data, with their lineage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gateway.cli.common import console, fail, load_config_or_exit
from gateway.settings import Settings

datasets_app = typer.Typer(help="Datasets made from captured traffic.", no_args_is_help=True)


@datasets_app.command("export")
def export(
    route: Annotated[str, typer.Option(help="The route whose captures to export.")],
    out: Annotated[Path, typer.Option(help="The JSONL file to write (and FILE.lineage.json).")],
    variant: Annotated[str | None, typer.Option(help="Only this variant's answers.")] = None,
    where: Annotated[
        str | None, typer.Option(help="FEEDBACK=VALUE: only inferences with that feedback.")
    ] = None,
    min_confidence: Annotated[
        float | None, typer.Option(min=0, max=1, help="Vote share (or letter probability).")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="An ISO date or time, a Unix time, or an age (7d, 12h).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="gateway.yaml; default: the embedded.")
    ] = None,
) -> None:
    """Write captured inferences as OpenAI's fine-tuning chat format, one {"messages"} a line."""
    from gateway.events.capture import purge_expired
    from gateway.events.capture_export import (
        CaptureFilter,
        chat_example,
        parse_since,
        parse_where,
        select_captures,
        write_dataset,
    )
    from gateway.events.stores import _redact, open_store

    cfg = load_config_or_exit(config)
    spec = cfg.routes.get(route)
    if spec is None:
        fail(f"--route: no route '{route}'; routes: {', '.join(cfg.routes) or 'none'}")
    chosen = CaptureFilter(
        route,
        variant,
        parse_where(where) if where else None,
        min_confidence,
        parse_since(since) if since else None,
    )
    store = open_store(cfg.events.url, Settings().home / "events.db")
    try:
        if spec.capture is not None:  # nothing past its retention is ever exported
            purge_expired(store, {route: spec.capture})
        rows = select_captures(store, chosen)
        side = write_dataset(
            out,
            [chat_example(r) for r in rows],
            [r["id"] for r in rows],
            {"source": _redact(store.url), "filter": chosen.describe()},
        )
    finally:
        store.close()
    console.print(f"wrote {len(rows)} examples to {out} and their lineage to {side}")
