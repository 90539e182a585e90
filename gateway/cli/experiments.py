"""``gateway report`` and ``gateway experiments``: results of routes' A/B experiments."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

from gateway.cli.common import console, fail, load_config_or_exit
from gateway.events.stores import open_store
from gateway.experiments.promotion import Promotions
from gateway.experiments.report import print_table, to_html
from gateway.settings import Settings

experiments_app = typer.Typer(help="Manage routes' experiments.", no_args_is_help=True)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="gateway.yaml; default: the embedded one.")
]


def report(
    route: Annotated[str | None, typer.Option(help="One route; default: all routes.")] = None,
    format: Annotated[str, typer.Option("--format", help="table, json or html.")] = "table",
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
    config: ConfigOption = None,
) -> None:
    """Per-variant results with 95% intervals, differences, p-values and a verdict."""
    if format not in ("table", "json", "html"):
        fail(f"--format is '{format}'; use table, json or html")
    cfg = load_config_or_exit(config)
    names = [route] if route else list(cfg.routes)
    for name in names:
        if name not in cfg.routes:
            fail(f"no route '{name}' in the config; routes: {', '.join(cfg.routes) or 'none'}")
    # A StoreError (the database is down) exits 1 through the root command.
    store = open_store(cfg.events.url, Settings().home / "events.db")
    # The decision is evaluated here too, so the automatic actions a route declares are taken
    # (in the store: a running gateway follows at its next evaluation of the route or start).
    promotions = Promotions(store)
    try:
        reports = [promotions.report(n, cfg.routes[n]) for n in names]
    finally:
        store.close()
    _emit(reports, format, out)


def _emit(reports: list[dict[str, Any]], format: str, out: Path | None) -> None:
    if format == "json":
        text = json.dumps(reports, indent=2)
    elif format == "html":
        text = to_html(reports)
    else:
        target = Console(file=out.open("w")) if out else console
        for one in reports:
            print_table(one, target)
        return
    if out:
        out.write_text(text, encoding="utf-8")
        console.print(f"wrote {out}")
    else:
        print(text)


@experiments_app.command("promote")
def promote(
    route: Annotated[str, typer.Argument(help="The route.")],
    variant: Annotated[str, typer.Argument(help="The variant that gets all traffic.")],
    url: Annotated[str, typer.Option(help="The running gateway.")] = "http://127.0.0.1:8080",
) -> None:
    """Send all of a route's traffic to one variant (kept across restarts)."""
    try:
        resp = httpx.post(f"{url}/v1/experiments/{route}/promote", json={"variant": variant})
    except httpx.HTTPError as exc:
        fail(f"cannot reach the gateway at {url}: {exc}", 1)
    if resp.status_code != 200:
        fail(resp.json().get("error", {}).get("message", resp.text), 1)
    console.print(f"route {route}: all traffic now goes to '{variant}'")
