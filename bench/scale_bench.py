"""Switchboard scaled out, in one run: one worker against two, and two replicas balanced two ways.

    python -m bench.scale_bench [--quick] [--phases workers,fleet] [--rates 100,200,400]
        [--duration S] [--fleet-duration S] [--out FILE.json] [--markdown FILE.md]

**Workers.** ``gateway serve`` and ``gateway serve --workers 2`` side by side on one upstream
double (both started, only one under load at a time), with the double itself (``direct``) as
the baseline; every figure called "added" is a gateway's minus direct's, from the same run.
First added latency one request at a time, the targets taking turns in rounds (as
``bench.gateway_bench`` does); then a constant-arrival sweep: per rate and gateway the achieved
rate, errors and added p50/p99 against direct at the same rate, the highest rate each keeps
added p99 under 50 ms, and the ratio highest(2 workers)/highest(1 worker). For the two-worker
gateway each step also records how its CPU time split between the workers: the kernel hands
each new *connection* to a worker, and the load generator opens another keep-alive connection
only when all of its are busy, so at low rates one worker may do all the work.

Nothing is pinned by default (``--client-cpus``/``--gateway-cpus`` pin on a bigger machine): on
2 cores two workers cannot each have a core to themselves, they share both with the load
generator and the double, so the ratio says what a second worker wins on this machine, not how
the gateway scales with cores. The background-load check at the end says whether other work
on the machine made the figures noise.

**Fleet.** One model with two ``urls``, two doubles in front of it, through a fresh gateway per
``balance.strategy`` (``round_robin``, then ``least_outstanding``), at the same constant load,
the doubles' counters reset in between. Both doubles answer in 20 ms when idle
(FLEET_LATENCY_MS), so no look at an idle replica tells them apart, but they slow differently
under load (the double's ``--load-ms``: each other request in flight adds that much, like an
engine whose batch grows): the fast one by 2 ms (FAST_LOAD_MS; it sustains about 1000/2 = 500
requests/s), the slow one by 25 ms (SLOW_LOAD_MS; under 1000/25 = 40 requests/s). Why these
numbers: at 100 requests/s (FLEET_RATE) round robin gives the slow replica half, 50/s, more than
the 40/s it sustains, so requests pile up on it and each one that arrives there waits longer;
the fast replica alone would carry all 100/s at about 22 ms (2.25 in flight). Least outstanding
sees the pile and sends the slow one fewer. A fixed extra latency alone would not show this:
least outstanding still sends such a replica a request whenever it is idle, and its latency does
not grow with what it is sent, so round robin would not overload it either. Switchboard's round
robin is not unbounded either: every request carries an affinity key, so a replica with
``balance.affinity_slack`` (8) more requests in flight than the least loaded is skipped; the
pile on the slow replica stops near 10 (about 20 + 25 x 10 = 270 ms a request) instead of
growing for the whole run. Reported side by side: p50, p99, max, errors and the share of
requests each double received (from its ``GET /_stats``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psutil
from rich.rule import Rule

from bench import report
from bench.gateway_bench import (
    PROMPT,
    SWEEP_STOP_P99_S,
    WARM_RATE,
    Bench,
    add_deltas,
    clean,
    highest_clean,
    interleaved,
    latency_summary,
    no_gc,
    step_row,
)
from bench.gateway_bench import Plan as GatewayPlan
from bench.gateway_bench import meta as gateway_meta
from bench.loadgen import Endpoint, RunResult, Sequential, constant_rate
from bench.servers import (
    GATEWAY_MODEL,
    UPSTREAM_MODEL,
    Server,
    start_switchboard,
    start_upstream,
    tree_sum,
)
from bench.upstream import run
from gateway.config.scale import BalanceSpec

WORKER_COUNTS = (1, 2)
# "The highest rate kept": added p99 under this; gateway_bench's sweep stops there too.
KEPT_P99_MS = SWEEP_STOP_P99_S * 1e3
STRATEGIES = ("round_robin", "least_outstanding")
FLEET_RATE = 100.0  # requests/s; see the module docstring for why these four
FLEET_LATENCY_MS = 20.0
FAST_LOAD_MS = 2.0
SLOW_LOAD_MS = 25.0
FLEET_WARM = 50  # requests one at a time through each fresh gateway before its run
NOISY_PCT = 5.0  # other processes and steal above this share of the machine: noisy figures


@dataclass(frozen=True)
class Plan:
    seq_rounds: int
    seq_per_round: int
    rates: list[int]
    duration_s: float  # per sweep rate
    fleet_duration_s: float  # per strategy

    @classmethod
    def for_args(cls, args: argparse.Namespace) -> Plan:
        if args.quick:
            plan = cls(6, 25, [100, 200, 400, 800], 3.0, 6.0)
        else:
            rates = [100, 200, 300, 400, 500, 600, 800, 1000, 1200, 1600, 2000]
            plan = cls(20, 100, rates, 8.0, 20.0)
        if args.rates:
            plan = replace(plan, rates=[int(r) for r in args.rates.split(",")])
        if args.duration:
            plan = replace(plan, duration_s=args.duration)
        if args.fleet_duration:
            plan = replace(plan, fleet_duration_s=args.fleet_duration)
        return plan

    def for_gateway_bench(self) -> GatewayPlan:
        # Bench keeps a gateway_bench plan for that suite's own phases; only these fields of
        # it mean anything here (the streaming and pipeline phases are not run).
        return GatewayPlan(
            self.seq_rounds, self.seq_per_round, self.rates, self.duration_s, 0, 0, [], 0
        )


def target_name(workers: int) -> str:
    return f"{workers} worker" + ("s" if workers > 1 else "")


# -- CPU accounting -----------------------------------------------------------------------------


def tree_cpu_s(pid: int) -> float:
    """User and system CPU seconds of a process and its live descendants."""
    return tree_sum(pid, lambda proc: sum(proc.cpu_times()[:2]))


def worker_cpu_s(server: Server) -> dict[int, float]:
    """CPU seconds of each worker of a ``--workers N`` gateway (its parent's children)."""
    try:
        children = psutil.Process(server.pid).children()
    except psutil.NoSuchProcess:
        return {}
    out: dict[int, float] = {}
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            out[child.pid] = sum(child.cpu_times()[:2])
    return out


def cpu_split(before: dict[int, float], after: dict[int, float]) -> list[float] | None:
    """Each worker's CPU seconds between two samples (None for a gateway without workers)."""
    used = [round(after[pid] - before[pid], 3) for pid in sorted(after) if pid in before]
    return used if len(used) > 1 else None


class MachineClock:
    """How much of the machine others used while the run went on, as gateway_bench reports.

    Taken from before the first server starts to after the last has stopped, so every process
    of the run is a waited-for child by the end (``os.times``' children fields): gateways that
    came and went (the fleet's) and the workers their parents reaped are all counted as ours.
    """

    def __init__(self) -> None:
        self.start = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[float, float, float, float]:
        machine = psutil.cpu_times()
        busy = machine.user + machine.nice + machine.system + machine.irq + machine.softirq
        ours = sum(os.times()[:4])  # this process and its reaped descendants
        return time.monotonic(), busy, getattr(machine, "steal", 0.0), ours

    def background(self) -> dict[str, float]:
        end = self._snapshot()
        capacity = (end[0] - self.start[0]) * (os.cpu_count() or 1)
        others = max(0.0, (end[1] - self.start[1]) - (end[3] - self.start[3]))
        return {
            "other_processes_pct": round(100 * others / capacity, 1),
            "steal_pct": round(100 * (end[2] - self.start[2]) / capacity, 1),
        }


# -- phase 1: one worker against two ------------------------------------------------------------


class WorkersBench(Bench):
    """gateway_bench's Bench with the gateways named by their worker count.

    A ``--workers 2`` gateway's parent only watches its workers, so "has it gone quiet" must
    look at the whole process tree, not at the pid Bench.quiet watches.
    """

    def __init__(self, servers: dict[str, Server], plan: Plan) -> None:
        super().__init__(servers, plan.for_gateway_bench())
        self.gateways = [target_name(n) for n in WORKER_COUNTS if target_name(n) in servers]
        self.targets = ["direct", *self.gateways]
        self.rss = {g: {} for g in self.gateways}
        self.scale = plan

    async def quiet(self, target: str, timeout_s: float = 5.0) -> None:
        if target not in self.rss:
            return
        pid = self.servers[target].pid
        deadline = time.monotonic() + timeout_s
        before = tree_cpu_s(pid)
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            now = tree_cpu_s(pid)
            if now - before < 0.002:  # clock ticks are 10 ms: this is "no tick at all"
                return
            before = now


async def warm(bench: WorkersBench) -> None:
    """First requests (imports, pools, caches), then a burst, then quiet: the idle memory and
    the first measured request find every process settled, every worker started."""
    for target in bench.gateways:
        await bench.quiet(target, timeout_s=120)  # a second worker may still be importing
    for target in bench.targets:
        client = Sequential(bench.endpoint(target))
        for _ in range(200):
            await client.one()
        client.close()
        await constant_rate(bench.endpoint(target), WARM_RATE, 1.0)
    await bench.settle()
    for target in bench.gateways:
        await bench.quiet(target, timeout_s=60)
    bench.sample_rss("idle")


async def sequential(bench: WorkersBench) -> dict[str, dict[str, Any]]:
    with no_gc():
        raw = await interleaved(bench, bench.scale.seq_rounds, bench.scale.seq_per_round)
    rows = {t: latency_summary(ex) for t, ex in raw.items()}
    add_deltas(rows, ["p50_ms", "p99_ms", "mean_ms"])
    return rows


async def sweep_step(
    bench: WorkersBench, target: str, rate: float, base: RunResult
) -> list[dict[str, Any]]:
    """One gateway at one rate; a failed rate is measured once more, as in gateway_bench (a
    burst of other work on the machine must not pass for the gateway's limit)."""
    server = bench.servers[target]
    rows = []
    for attempt in (1, 2):
        before = worker_cpu_s(server)
        with no_gc():
            result = await constant_rate(
                bench.endpoint(target),
                rate,
                bench.scale.duration_s,
                on_tick=bench.peak_sampler(target),
            )
        row = step_row(target, result, base)
        row["attempt"] = attempt
        row["worker_cpu_s"] = cpu_split(before, worker_cpu_s(server))
        rows.append(row)
        await bench.settle()
        if clean(row, KEPT_P99_MS):
            break
    return rows


async def sweep(bench: WorkersBench) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    active = list(bench.gateways)
    for i, rate in enumerate(bench.scale.rates):
        if not active:
            break
        report.progress(f"rate {rate}/s: {', '.join(['direct', *active])}")
        with no_gc():
            base = await constant_rate(bench.endpoint("direct"), rate, bench.scale.duration_s)
        steps.append(step_row("direct", base, None))
        await bench.settle()
        # Who goes first rotates with the rate, so neither always follows the other's backlog.
        order = active[i % len(active) :] + active[: i % len(active)]
        for target in order:
            rows = await sweep_step(bench, target, rate, base)
            steps.extend(rows)
            if not clean(rows[-1], KEPT_P99_MS):
                active.remove(target)  # saturated: higher rates would only measure a backlog
    tested = max((s["rate"] for s in steps), default=0)
    highest = {
        g: highest_clean([s for s in steps if s["target"] == g], KEPT_P99_MS)
        for g in bench.gateways
    }
    one, two = (highest.get(target_name(n)) for n in WORKER_COUNTS)
    return {
        "steps": steps,
        "tested_up_to": tested,
        "highest_under_50ms": highest,
        # At the highest rate tested the limit may be higher still: the sweep ran out of rates.
        "capped": {g: bool(tested) and v >= tested for g, v in highest.items()},
        "ratio_2_to_1": two / one if one and two is not None else None,
    }


async def measure_workers(bench: WorkersBench) -> dict[str, Any]:
    await warm(bench)
    rows = await sequential(bench)
    show(sequential_section(rows, bench.gateways))
    await bench.settle()
    swept = await sweep(bench)
    for section in sweep_sections(swept, bench.gateways):
        show(section)
    await asyncio.sleep(2)
    bench.sample_rss("after")
    show(memory_section(bench.rss))
    return {"sequential": rows, "sweep": swept, "memory": bench.rss}


def phase_workers(workdir: Path, plan: Plan, cpus: dict[str, set[int]]) -> dict[str, Any]:
    servers: dict[str, Server] = {}
    try:
        upstream = start_upstream(workdir, cpus["client"])
        servers.update(upstream=upstream, direct=upstream)
        for n in WORKER_COUNTS:
            report.progress(f"starting Switchboard with {target_name(n)}")
            home = workdir / f"workers-{n}"  # its own log, event log and spool
            home.mkdir()
            servers[target_name(n)] = start_switchboard(
                home, cpus["gateway"], upstream.url, workers=n
            )
        bench = WorkersBench(servers, plan)
        results: dict[str, Any] = run(lambda: measure_workers(bench))
        return results
    finally:
        for server in {id(s): s for s in servers.values()}.values():
            server.stop()


# -- phase 2: two replicas, two strategies ------------------------------------------------------


def fleet_config(workdir: Path, urls: Sequence[str], strategy: str) -> Path:
    model = {
        "engine": "vllm",
        "urls": list(urls),
        "upstream_model": UPSTREAM_MODEL,
        "balance": {"strategy": strategy},
    }
    path = workdir / f"fleet-{strategy}.yaml"
    path.write_text(json.dumps({"models": {GATEWAY_MODEL: model}}, indent=2))  # JSON is YAML
    return path


async def _doubles(urls: dict[str, str], method: str, path: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10.0) as client:
        out = {}
        for name, url in urls.items():
            resp = await client.request(method, url + path)
            resp.raise_for_status()
            out[name] = resp.json()
        return out


async def settle(urls: dict[str, str], timeout_s: float = 60.0) -> None:
    """Bench.settle for several doubles: nothing in flight on any of them."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = await _doubles(urls, "GET", "/_stats")
        if all(s["in_flight"] == 0 for s in stats.values()):
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(0.5)


async def fleet_run(
    strategy: str, gateway: Server, doubles: dict[str, str], plan: Plan
) -> dict[str, Any]:
    endpoint = Endpoint.chat(
        gateway.url,
        {"model": GATEWAY_MODEL, "messages": PROMPT, "max_tokens": 16},
        headers={"authorization": "Bearer sk-bench"},
    )
    client = Sequential(endpoint)
    for _ in range(FLEET_WARM):
        await client.one()
    client.close()
    await settle(doubles)
    await _doubles(doubles, "POST", "/_stats/reset")
    with no_gc():
        # A long drain: round robin leaves the slow replica a backlog that takes seconds.
        result = await constant_rate(endpoint, FLEET_RATE, plan.fleet_duration_s, drain_s=60.0)
    stats = await _doubles(doubles, "GET", "/_stats")
    await settle(doubles)
    total = sum(s["requests"] for s in stats.values()) or 1
    row = step_row(strategy, result, None)
    row["requests"] = {name: s["requests"] for name, s in stats.items()}
    row["share"] = {name: s["requests"] / total for name, s in stats.items()}
    return row


def phase_fleet(workdir: Path, plan: Plan, cpus: dict[str, set[int]]) -> dict[str, Any]:
    doubles: dict[str, Server] = {}
    runs: dict[str, dict[str, Any]] = {}
    try:
        for name, load_ms in (("fast", FAST_LOAD_MS), ("slow", SLOW_LOAD_MS)):
            doubles[name] = start_upstream(
                workdir, cpus["client"], latency_ms=FLEET_LATENCY_MS, load_ms=load_ms, name=name
            )
        urls = {name: d.url for name, d in doubles.items()}
        for strategy in STRATEGIES:
            report.progress(f"fleet: {strategy}, {FLEET_RATE:g}/s for {plan.fleet_duration_s:g} s")
            home = workdir / strategy
            home.mkdir()
            config = fleet_config(home, list(urls.values()), strategy)
            gateway = start_switchboard(home, cpus["gateway"], urls["fast"], config=config)
            try:
                runs[strategy] = run(partial(fleet_run, strategy, gateway, urls, plan))
            finally:
                gateway.stop()
    finally:
        for server in doubles.values():
            server.stop()
    show(fleet_section(runs))
    return {
        "rate": FLEET_RATE,
        "duration_s": plan.fleet_duration_s,
        "doubles": {
            "fast": {"latency_ms": FLEET_LATENCY_MS, "load_ms": FAST_LOAD_MS},
            "slow": {"latency_ms": FLEET_LATENCY_MS, "load_ms": SLOW_LOAD_MS},
        },
        "affinity_slack": BalanceSpec().affinity_slack,  # bounds round robin too (docstring)
        "runs": runs,
    }


# -- tables -------------------------------------------------------------------------------------

WIDTH = 80  # every table and line of the terminal output fits in this


@dataclass(frozen=True)
class Section:
    """One table, for the terminal and for Markdown alike, and a note on how to read it."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""


def say(text: str) -> None:
    report.console.print(text, width=WIDTH)


def show(section: Section) -> None:
    table = report._table(section.title, section.columns)
    for row in section.rows:
        table.add_row(*row)
    report.console.print(table)
    if section.note:
        say(f"[dim]{section.note}[/dim]")


def markdown_table(section: Section) -> str:
    note = f"\n{section.note}\n" if section.note else ""
    return f"{section.title}:\n\n" + report._md(section.columns, section.rows) + note


def sequential_section(rows: dict[str, dict[str, Any]], gateways: list[str]) -> Section:
    one, two = (target_name(n) for n in WORKER_COUNTS)
    metrics = [
        ("p50", "p50_ms"),
        ("p99", "p99_ms"),
        ("added p50", "added_p50_ms"),
        ("added p99", "added_p99_ms"),
        ("added mean", "added_mean_ms"),
    ]
    out = []
    for label, key in metrics:
        values = {t: rows[t].get(key) for t in rows}
        cells = [report.ms(values.get(t)) for t in ("direct", *gateways)]
        # report.ratio leaves out a ratio that would mislead (of a delta at or below zero).
        out.append([label, *cells, report.ratio(values.get(two), values.get(one))])
    return Section(
        "One request at a time (ms)",
        ["", "direct", *gateways, "2/1"],
        out,
        "The targets take turns in rounds; added: minus direct; 2/1: 2 workers over 1.",
    )


def sweep_sections(swept: dict[str, Any], gateways: list[str]) -> list[Section]:
    rows = [
        [
            f"{s['rate']:g}",
            s["target"] + ("*" if s.get("attempt", 1) > 1 else ""),
            f"{s['achieved']:.0f}",
            str(s["errors"]),
            str(s["connections"]),
            report.ms(s.get("added_p50_ms")),
            report.ms(s.get("added_p99_ms")),
            _split_text(s.get("worker_cpu_s")),
        ]
        for s in swept["steps"]
    ]
    steps = Section(
        "Constant-arrival sweep (ms from the due time)",
        ["rate", "target", "achieved", "err", "conns", "added p50", "added p99", "CPU %"],
        rows,
        "*: measured again after a failed attempt. err: errors. conns: connections the load "
        "generator opened. CPU %: how the workers split the gateway's CPU time (each "
        "connection is served by one worker).",
    )
    highest, capped = swept["highest_under_50ms"], swept["capped"]
    kept = [[g, ("≥" if capped.get(g) else "") + f"{highest[g]:g}"] for g in gateways]
    ratio = swept["ratio_2_to_1"]
    kept.append(["2 workers / 1 worker", "-" if ratio is None else f"{ratio:.2f}x"])
    limit = Section(
        "Highest rate kept (requests/s)",
        ["", "rate"],
        kept,
        f"Kept: no errors, at least 98% of the rate achieved, added p99 < {KEPT_P99_MS:g} ms, "
        f"at that rate and every lower one. ≥: kept at the highest rate tested "
        f"({swept['tested_up_to']:g}/s), so the limit is higher still.",
    )
    return [steps, limit]


def _split_text(split: list[float] | None) -> str:
    """The workers' shares of the gateway's CPU in a step, e.g. '55/45'."""
    if not split or sum(split) <= 0:
        return "-"
    return "/".join(f"{100 * s / sum(split):.0f}" for s in split)


def memory_section(rss: dict[str, dict[str, int]]) -> Section:
    rows = [[label, *(_mb(rss[g].get(label)) for g in rss)] for label in ("idle", "peak", "after")]
    return Section(
        "Resident memory (MB)",
        ["", *rss],
        rows,
        "All of a gateway's processes (a --workers parent and its workers) together.",
    )


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / report.MB:.1f}"


def fleet_section(runs: dict[str, dict[str, Any]]) -> Section:
    names = [s for s in STRATEGIES if s in runs]

    def row(label: str, cell: Callable[[dict[str, Any]], str]) -> list[str]:
        return [label, *(cell(runs[s]) for s in names)]

    def share(name: str) -> Callable[[dict[str, Any]], str]:
        return lambda r: f"{100 * r['share'].get(name, 0):.0f}% ({r['requests'].get(name, 0)})"

    return Section(
        f"Two replicas, {FLEET_RATE:g} requests/s (ms)",
        ["", *(s.replace("_", " ") for s in names)],
        [
            row("achieved/s", lambda r: f"{r['achieved']:.0f}"),
            row("errors", lambda r: str(r["errors"])),
            row("p50", lambda r: report.ms(r["p50_ms"])),
            row("p99", lambda r: report.ms(r["p99_ms"])),
            row("max", lambda r: report.ms(r["max_ms"])),
            row("to fast", share("fast")),
            row("to slow", share("slow")),
        ],
        f"Both doubles answer in {FLEET_LATENCY_MS:g} ms alone; each other request in flight "
        f"adds {FAST_LOAD_MS:g} ms on the fast one, {SLOW_LOAD_MS:g} ms on the slow one. "
        "to fast/slow: the share (and number) of requests each received.",
    )


def all_sections(results: dict[str, Any]) -> list[Section]:
    sections = []
    workers = results.get("workers")
    if workers:
        gateways = list(workers["memory"])
        sections.append(sequential_section(workers["sequential"], gateways))
        sections.extend(sweep_sections(workers["sweep"], gateways))
        sections.append(memory_section(workers["memory"]))
    if results.get("fleet"):
        sections.append(fleet_section(results["fleet"]["runs"]))
    return sections


def header(meta: dict[str, Any]) -> None:
    report.console.print(Rule("[bold]Switchboard scaled out: workers and replicas"), width=WIDTH)
    dirty = " (gateway/ modified)" if meta["dirty"] else ""
    say(f"{meta['date']}  commit {meta['commit']}{dirty}")
    say(f"{meta['machine']}; Python {meta['python']}")
    say("cores: " + _layout_text(meta))
    say(f"command: {meta['command']}")


def _layout_text(meta: dict[str, Any]) -> str:
    places = ", ".join(f"{k} {v}" for k, v in meta["layout"].items())
    return places + (" (nothing pinned)" if meta["unpinned"] else "")


def footer(meta: dict[str, Any]) -> None:
    say(f"[dim]total {meta['elapsed_s']:.0f} s[/dim]")
    say(report._noise_line(meta))
    if noisy(meta):
        say(
            "[yellow]warning:[/yellow] other work used the machine during the run; its "
            "figures are noisy (compare the ratios, or run again on a quiet machine)"
        )


def noisy(meta: dict[str, Any]) -> bool:
    noise = meta["background_cpu"]
    return bool(noise["other_processes_pct"] + noise["steal_pct"] > NOISY_PCT)


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    dirty = ", gateway/ modified" if meta["dirty"] else ""
    parts = [
        f"Measured {meta['date']} (commit {meta['commit']}{dirty}), {meta['machine']}. "
        f"Cores: {_layout_text(meta)}.\n",
        f"```\n{meta['command']}\n```\n",
        report._noise_line(meta) + (" (noisy)" if noisy(meta) else "") + ".\n",
    ]
    parts += [markdown_table(section) for section in all_sections(results)]
    return "\n".join(parts)


# -- the run ------------------------------------------------------------------------------------


def cpu_layout(args: argparse.Namespace) -> dict[str, set[int]]:
    """Where each process runs; by default everywhere (nothing pinned), see the docstring."""
    available = os.sched_getaffinity(0)

    def parse(text: str | None) -> set[int]:
        return {int(c) for c in text.split(",")} if text else set(available)

    return {"client": parse(args.client_cpus), "gateway": parse(args.gateway_cpus)}


def meta(args: argparse.Namespace, plan: Plan, cpus: dict[str, set[int]]) -> dict[str, Any]:
    def cores(which: set[int]) -> str:
        return ",".join(str(c) for c in sorted(which))

    places = {
        "load generator": cores(cpus["client"]),
        "upstream doubles": cores(cpus["client"]),
        "gateways": cores(cpus["gateway"]),
    }
    # gateway_bench's metadata (date, commit, machine, load), with this bench's own details.
    info = gateway_meta(args, plan.for_gateway_bench(), places, None)
    info.pop("litellm", None)
    info.update(
        command=shlex.join(["python", "-m", "bench.scale_bench", *sys.argv[1:]]),
        cores=sorted(os.sched_getaffinity(0)),
        unpinned=cpus["client"] == cpus["gateway"] == os.sched_getaffinity(0),
        plan=plan.__dict__,
        upstream={
            "workers": "one double, answering at once",
            "fleet": {
                "rate": FLEET_RATE,
                "latency_ms": FLEET_LATENCY_MS,
                "load_ms": {"fast": FAST_LOAD_MS, "slow": SLOW_LOAD_MS},
            },
        },
    )
    return info


PHASES = ("workers", "fleet")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rates, shorter steps")
    parser.add_argument("--rates", help="comma-separated requests/s for the workers' sweep")
    parser.add_argument("--duration", type=float, help="seconds per sweep rate")
    parser.add_argument("--fleet-duration", type=float, help="seconds per balance strategy")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"a subset of {PHASES}")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the tables as Markdown here")
    parser.add_argument("--client-cpus", help="load generator and doubles (default: all)")
    parser.add_argument("--gateway-cpus", help="the gateways (default: all)")
    args = parser.parse_args(argv)
    phases = set(args.phases.split(","))
    if phases - set(PHASES):
        parser.error(f"--phases: unknown {sorted(phases - set(PHASES))}")
    plan = Plan.for_args(args)
    cpus = cpu_layout(args)
    os.sched_setaffinity(0, cpus["client"])
    results: dict[str, Any] = {"meta": meta(args, plan, cpus)}
    header(results["meta"])
    started = time.monotonic()
    clock = MachineClock()
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        workdir = Path(tmp)
        if "workers" in phases:
            (workdir / "workers").mkdir()
            results["workers"] = phase_workers(workdir / "workers", plan, cpus)
        if "fleet" in phases:
            (workdir / "fleet").mkdir()
            results["fleet"] = phase_fleet(workdir / "fleet", plan, cpus)
    results["meta"]["background_cpu"] = clock.background()
    results["meta"]["elapsed_s"] = round(time.monotonic() - started, 1)
    footer(results["meta"])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(results))


if __name__ == "__main__":
    main()
