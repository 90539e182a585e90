"""One ``gateway eval`` invocation: open the backend, plan or resume the run, run it with
progress bars. The command itself (cli/eval.py) stays light to import."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from gateway.app import create_app
from gateway.config.loader import load_config
from gateway.config.schema import GatewayConfig
from gateway.errors import EvalError
from gateway.evaluation.backends import (
    Backend,
    HttpBackend,
    InProcessBackend,
    VariantInfo,
    variant_infos,
)
from gateway.evaluation.data import EvalData
from gateway.evaluation.learned import learned_from_config
from gateway.evaluation.run import RunPlan, choose_variants, load_results, pending, plan_run, run
from gateway.evaluation.scoring import ScorerSpec
from gateway.settings import Settings


class EvalSession:
    """One invocation; ``plan`` is kept so an interrupted run can still write its report."""

    def __init__(
        self,
        out: Path,
        route: str,
        wanted: list[str] | None,
        data: EvalData,
        scorer: ScorerSpec,
        *,
        limit: int | None,
        concurrency: int,
        console: Console,
    ) -> None:
        self.out, self.route, self.wanted, self.data = out, route, wanted, data
        self.scorer, self.limit, self.concurrency = scorer, limit, concurrency
        self.console = console
        self.plan: RunPlan | None = None

    async def main(self, config: Path | None, url: str | None) -> None:
        if url is not None:
            async with http_backend(url) as backend:
                self.plan = self._plan(await backend.variants(self.route), url)
                await self._run(self.plan, backend)
            return
        settings = Settings()
        cfg = load_config(config or settings.config)
        spec = cfg.routes.get(self.route)
        if spec is None:
            raise EvalError(
                f"no route '{self.route}' in the config; routes: {', '.join(cfg.routes) or 'none'}"
            )
        # What each variant learned from is read from its adapter and bank, before any engine.
        targets = {name: (v.target, v.pipeline) for name, v in spec.variants.items()}
        learned = learned_from_config(cfg, settings, targets)
        self.plan = self._plan(variant_infos(spec, learned), "in process")
        if not pending(self.plan):
            return  # finished earlier: only the report is written again, no engine is started
        async with in_process_backend(cfg, settings, self.console) as backend:
            await self._run(self.plan, backend)

    def _plan(self, available: dict[str, VariantInfo], where: str) -> RunPlan:
        chosen = choose_variants(available, self.wanted)
        plan = plan_run(
            self.out,
            self.route,
            available,
            chosen,
            self.data,
            self.scorer,
            limit=self.limit,
            target=where,
        )
        data = plan.manifest["data"]
        for name, count in data["left_out"]["learned"].items():
            if count:
                self.console.print(f"{count} items left out: variant '{name}' learned from them")
        for note in data["notes"]:
            self.console.print(f"[yellow]note:[/yellow] {note}")
        return plan

    async def _run(self, plan: RunPlan, backend: Backend) -> None:
        done = {v: load_results(plan.out, v) for v in plan.variants}
        ids = {item.id for item in plan.items}
        progress = Progress(
            TextColumn("{task.description:>16}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[score]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        tally: dict[str, list[int]] = {}
        tasks: dict[str, TaskID] = {}
        for variant in plan.variants:
            ok = [r for i, r in done[variant].items() if i in ids and r.get("status") == "ok"]
            tally[variant] = [len(ok), sum(bool(r.get("correct")) for r in ok), 0]
            tasks[variant] = progress.add_task(
                variant,
                total=len(plan.items),
                completed=len(ok),
                score=_score(tally[variant]),
                start=len(ok) < len(plan.items),  # finished earlier: no clock
            )

        def on_result(variant: str, record: dict[str, Any]) -> None:
            counts = tally[variant]
            counts[0] += 1
            counts[1] += bool(record.get("correct"))
            counts[2] += record.get("status") != "ok"
            progress.update(tasks[variant], advance=1, score=_score(counts))

        with progress:
            await run(plan, backend, concurrency=self.concurrency, on_result=on_result)


def _score(counts: list[int]) -> str:
    done, correct, errors = counts
    accuracy = f"acc {correct / done:.2f}" if done else "acc -"
    return accuracy + (f" err {errors}" if errors else "")


@asynccontextmanager
async def http_backend(url: str) -> AsyncIterator[HttpBackend]:
    """A running gateway (``--url``); calls may take minutes (ensembles on a CPU)."""
    timeout = httpx.Timeout(None, connect=10.0)
    async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout) as client:
        yield HttpBackend(client)


@asynccontextmanager
async def in_process_backend(
    cfg: GatewayConfig, settings: Settings, console: Console
) -> AsyncIterator[InProcessBackend]:
    """The gateway of ``cfg`` in this process: its lifespan starts the engines (vLLM too)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app = create_app(cfg, settings)
    async with AsyncExitStack() as stack:
        with console.status("starting the gateway and its engines (vLLM takes about 30 s)"):
            await stack.enter_async_context(app.router.lifespan_context(app))
        yield InProcessBackend(app.state.gateway)
