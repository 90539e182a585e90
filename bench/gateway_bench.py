"""Switchboard against the LiteLLM proxy, in front of the same upstream double, in one run.

    python -m bench.gateway_bench [--quick] [--rates 50,100,200] [--duration S] [--out FILE]

Three targets get the same load: ``direct`` (the upstream double itself, the baseline),
``switchboard`` and ``litellm`` (each one worker process). Every figure called "added" is the
target's minus direct's, measured in the same run. Phases, in order:

1. added latency, one request at a time, the targets taking turns in rounds;
2. a constant-arrival sweep (open-loop, latency from the due time): per rate the achieved rate,
   errors and added p50/p99, and the highest rate each gateway keeps added p99 under 10 and
   50 ms; then the upstream double alone at three times the highest rate tested;
3. streaming: added time to first token and added p99 gap between chunks, one stream at a time
   in rounds; then concurrent slow streams in growing numbers, until one stalls;
4. resident memory of each gateway idle, at its peak under load, and after the load;
5. the pipeline's own cost with the engine excluded (``bench.pipeline_cost``).

Layout on a 2-core machine: the gateways on core 1 (only one of them under load at a time),
this process (the load generator) and the upstream double on core 0. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench import report
from bench.loadgen import Endpoint, Exchange, RunResult, Sequential, constant_rate, percentile
from bench.servers import (
    GATEWAY_DRIP_MODEL,
    GATEWAY_MODEL,
    REPO_ROOT,
    UPSTREAM_DRIP_MODEL,
    UPSTREAM_MODEL,
    Server,
    start_litellm,
    start_switchboard,
    start_upstream,
)
from bench.upstream import run

TARGETS = ("direct", "switchboard", "litellm")
GATEWAYS = ("switchboard", "litellm")
PROMPT = [{"role": "user", "content": "Say hello in five words."}]
# The fast model's streams: short gaps, so a gateway's per-chunk cost shows in the gap figures.
STREAM_CHUNKS, STREAM_GAP_MS = 16, 2.0
# The drip model's streams, for the concurrency test: an LLM's pace, as many chunks as the
# request's max_tokens. Streams arrive at STREAM_ARRIVAL per second (a pace every gateway
# sustains, so the test is about holding streams open, not about opening them) and each lasts
# until the last has been running for STREAM_OVERLAP_S.
DRIP_GAP_MS = 50.0
STREAM_ARRIVAL = 50.0
# The warm-up burst before the idle memory sample (requests/s for 1 s, then streams).
WARM_RATE = 100.0
STREAM_OVERLAP_S = 2.0
STALL_S = 0.25  # a gap this long in a 50 ms drip is a stall a reader would notice
SWEEP_STOP_P99_S = 0.050  # a gateway's sweep ends after the first rate over this (or errors)


@dataclass(frozen=True)
class Plan:
    seq_rounds: int
    seq_per_round: int
    rates: list[int]
    duration_s: float
    stream_rounds: int
    stream_per_round: int
    stream_counts: list[int]
    pipeline_iterations: int

    @classmethod
    def for_args(cls, args: argparse.Namespace) -> Plan:
        if args.quick:
            plan = cls(10, 30, [50, 100, 200, 400, 800], 3.0, 8, 10, [50, 200], 200)
        else:
            rates = [25, 50, 100, 150, 200, 300, 400, 500, 600, 800, 1000, 1200, 1600, 2000]
            plan = cls(20, 100, rates, 8.0, 20, 20, [25, 50, 100, 200, 400, 800], 1000)
        if args.rates:
            plan = _replace(plan, rates=[int(r) for r in args.rates.split(",")])
        if args.duration:
            plan = _replace(plan, duration_s=args.duration)
        return plan


def _replace(plan: Plan, **changes: Any) -> Plan:
    return Plan(**{**plan.__dict__, **changes})


class Bench:
    """The servers of one run, their endpoints, and what has been measured so far."""

    def __init__(self, servers: dict[str, Server], plan: Plan) -> None:
        self.servers = servers
        self.plan = plan
        self.results: dict[str, Any] = {}
        self.rss: dict[str, dict[str, int]] = {g: {} for g in GATEWAYS if g in servers}
        self.targets = [t for t in TARGETS if t in servers]

    def endpoint(
        self, target: str, *, stream: bool = False, drip: bool = False, max_tokens: int = 16
    ) -> Endpoint:
        if target == "direct":
            model = UPSTREAM_DRIP_MODEL if drip else UPSTREAM_MODEL
            url = self.servers["upstream"].url
        else:
            model = GATEWAY_DRIP_MODEL if drip else GATEWAY_MODEL
            url = self.servers[target].url
        body: dict[str, Any] = {"model": model, "messages": PROMPT, "max_tokens": max_tokens}
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
        return Endpoint.chat(url, body, headers={"authorization": "Bearer sk-bench"})

    def sample_rss(self, label: str) -> None:
        for name in self.rss:
            self.rss[name][label] = self.servers[name].rss_bytes()

    def peak_sampler(self, target: str) -> Any:
        if target not in self.rss:
            return None
        server, peaks = self.servers[target], self.rss[target]

        def sample() -> None:
            peaks["peak"] = max(peaks.get("peak", 0), server.rss_bytes())

        return sample

    async def quiet(self, target: str, timeout_s: float = 5.0) -> None:
        """Wait until a gateway has stopped working after its turn (e.g. logging tasks that
        outlive the responses): the gateways share a core, and the next turn is another's."""
        if target not in self.rss:
            return
        proc = psutil.Process(self.servers[target].pid)
        deadline = time.monotonic() + timeout_s
        before = sum(proc.cpu_times()[:2])
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            now = sum(proc.cpu_times()[:2])
            if now - before < 0.002:  # clock ticks are 10 ms: this is "no tick at all"
                return
            before = now

    def cpu_snapshot(self) -> tuple[float, float, float, float]:
        """(wall, machine busy, steal, this run's processes) in seconds, for the noise check."""
        machine = psutil.cpu_times()
        busy = machine.user + machine.nice + machine.system + machine.irq + machine.softirq
        ours = sum(os.times()[:2])
        for server in {id(s): s for s in self.servers.values()}.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                ours += sum(psutil.Process(server.pid).cpu_times()[:2])
        return time.monotonic(), busy, getattr(machine, "steal", 0.0), ours

    def background(self, start: tuple[float, float, float, float]) -> dict[str, float]:
        """How much of the machine others used meanwhile (other processes, the hypervisor):
        figures from a run where this is high are noise, not the gateways."""
        end = self.cpu_snapshot()
        capacity = (end[0] - start[0]) * (os.cpu_count() or 1)
        others = max(0.0, (end[1] - start[1]) - (end[3] - start[3]))
        return {
            "other_processes_pct": round(100 * others / capacity, 1),
            "steal_pct": round(100 * (end[2] - start[2]) / capacity, 1),
        }

    async def settle(self, timeout_s: float = 60.0) -> None:
        """Wait until the upstream has nothing in flight (a saturated gateway drains its backlog
        after the client has gone), then a moment for the gateways' own background work."""
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(base_url=self.servers["upstream"].url) as client:
            while time.monotonic() < deadline:
                stats = (await client.get("/_stats")).json()
                if stats["in_flight"] == 0:
                    break
                await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """The load generator must not pause mid-run for a full collection of its own records."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# -- phase 1: one request at a time -------------------------------------------------------------


async def interleaved(
    bench: Bench, rounds: int, per_round: int, *, stream: bool = False
) -> dict[str, list[Exchange]]:
    """Each round sends ``per_round`` requests to each target in turn (the order rotating), so
    slow drifts of the machine reach every target alike."""
    clients = {
        t: Sequential(bench.endpoint(t, stream=stream), stream=stream) for t in bench.targets
    }
    results: dict[str, list[Exchange]] = {t: [] for t in bench.targets}
    try:
        for client in clients.values():  # warm: connections open, code paths hot
            for _ in range(20):
                await client.one()
        for r in range(rounds):
            order = (
                bench.targets[r % len(bench.targets) :] + bench.targets[: r % len(bench.targets)]
            )
            for target in order:
                await bench.quiet(target)
                for _ in range(per_round):
                    results[target].append(await clients[target].one())
                await bench.quiet(target)
    finally:
        for client in clients.values():
            client.close()
    return results


def latency_summary(exchanges: list[Exchange]) -> dict[str, Any]:
    ok = [ex.done - ex.sent for ex in exchanges if ex.ok]
    return {
        "n": len(exchanges),
        "errors": len(exchanges) - len(ok),
        "p50_ms": percentile(ok, 50) * 1e3,
        "p99_ms": percentile(ok, 99) * 1e3,
        "mean_ms": sum(ok) / len(ok) * 1e3 if ok else float("nan"),
    }


def stream_summary(exchanges: list[Exchange]) -> dict[str, Any]:
    ok = [ex for ex in exchanges if ex.ok and ex.events]
    ttfts = [ex.events[0] - ex.sent for ex in ok]
    gaps = [b - a for ex in ok for a, b in zip(ex.events, ex.events[1:], strict=False)]
    return {
        "n": len(exchanges),
        "errors": len(exchanges) - len(ok),
        "ttft_p50_ms": percentile(ttfts, 50) * 1e3,
        "ttft_p99_ms": percentile(ttfts, 99) * 1e3,
        "gap_p50_ms": percentile(gaps, 50) * 1e3,
        "gap_p99_ms": percentile(gaps, 99) * 1e3,
    }


def add_deltas(rows: dict[str, dict[str, Any]], keys: list[str]) -> None:
    """``added_<key>``: the target's figure minus direct's."""
    base = rows.get("direct")
    for target, row in rows.items():
        for key in keys:
            row[f"added_{key}"] = row[key] - base[key] if base and target != "direct" else 0.0


async def phase_sequential(bench: Bench) -> None:
    plan = bench.plan
    with no_gc():
        raw = await interleaved(bench, plan.seq_rounds, plan.seq_per_round)
    rows = {t: latency_summary(ex) for t, ex in raw.items()}
    add_deltas(rows, ["p50_ms", "p99_ms", "mean_ms"])
    bench.results["sequential"] = rows
    report.sequential(rows)


# -- phase 2: constant-arrival sweep ------------------------------------------------------------


def step_row(target: str, result: RunResult, base: RunResult | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "target": target,
        "rate": result.rate,
        "achieved": result.achieved_rate,
        "sent": result.sent,
        "ok": result.ok,
        "errors": result.error_count,
        "error_kinds": result.errors,
        "p50_ms": result.p(50) * 1e3,
        "p99_ms": result.p(99) * 1e3,
        "max_ms": result.p(100) * 1e3,
        "connections": result.connections,
    }
    if base is not None:
        row["added_p50_ms"] = row["p50_ms"] - base.p(50) * 1e3
        row["added_p99_ms"] = row["p99_ms"] - base.p(99) * 1e3
    return row


def clean(row: dict[str, Any], limit_ms: float) -> bool:
    """The rate was kept: every request answered, on time, with the tail under the limit."""
    return bool(
        row["errors"] == 0
        and row["achieved"] >= 0.98 * row["rate"]
        and row.get("added_p99_ms", row["p99_ms"]) < limit_ms
    )


def highest_clean(rows: list[dict[str, Any]], limit_ms: float) -> float:
    """The highest rate up to which every tested rate was clean (0: not even the lowest).

    A rate measured twice (a retry) counts as clean when either attempt was.
    """
    kept: dict[float, bool] = {}
    for row in rows:
        kept[row["rate"]] = kept.get(row["rate"], False) or clean(row, limit_ms)
    best = 0.0
    for rate in sorted(kept):
        if not kept[rate]:
            break
        best = rate
    return best


async def phase_sweep(bench: Bench) -> None:
    plan = bench.plan
    active = [g for g in GATEWAYS if g in bench.servers]
    steps: list[dict[str, Any]] = []
    for rate in plan.rates:
        if not active:
            break
        report.progress(f"rate {rate}/s: {', '.join(['direct', *active])}")
        with no_gc():
            base = await constant_rate(bench.endpoint("direct"), rate, plan.duration_s)
        steps.append(step_row("direct", base, None))
        await bench.settle()
        for target in list(active):
            # A failed rate is measured once more before the sweep ends for this gateway: a
            # burst of other work on the machine must not pass for the gateway's limit.
            for attempt in range(2):
                with no_gc():
                    result = await constant_rate(
                        bench.endpoint(target),
                        rate,
                        plan.duration_s,
                        on_tick=bench.peak_sampler(target),
                    )
                row = step_row(target, result, base)
                row["attempt"] = attempt + 1
                steps.append(row)
                await bench.settle()
                if clean(row, SWEEP_STOP_P99_S * 1e3):
                    break
            else:
                active.remove(target)  # saturated: higher rates would only measure a backlog
    tested = max((s["rate"] for s in steps), default=0)
    limits = {
        target: {
            "under_10ms": highest_clean([s for s in steps if s["target"] == target], 10.0),
            "under_50ms": highest_clean([s for s in steps if s["target"] == target], 50.0),
        }
        for target in GATEWAYS
        if target in bench.servers
    }
    capacity = await upstream_capacity(bench, 3 * tested)
    bench.results["sweep"] = {"steps": steps, "highest": limits, "upstream_capacity": capacity}
    report.sweep(steps, limits, capacity)


async def upstream_capacity(bench: Bench, rate: float) -> dict[str, Any]:
    """The double alone at ``rate`` (three times the highest rate tested), sharing its core
    with the load generator as in every other step."""
    with no_gc():
        result = await constant_rate(bench.endpoint("direct"), rate, bench.plan.duration_s)
    await bench.settle()
    return step_row("direct", result, None)


# -- phase 3: streaming -------------------------------------------------------------------------


async def phase_streams(bench: Bench) -> None:
    plan = bench.plan
    with no_gc():
        raw = await interleaved(bench, plan.stream_rounds, plan.stream_per_round, stream=True)
    rows = {t: stream_summary(ex) for t, ex in raw.items()}
    add_deltas(rows, ["ttft_p50_ms", "ttft_p99_ms", "gap_p50_ms", "gap_p99_ms"])
    bench.results["streaming"] = rows
    report.streaming(rows)
    await bench.settle()

    levels: list[dict[str, Any]] = []
    active = list(bench.targets)
    for count in plan.stream_counts:
        if not set(active) & set(GATEWAYS):
            break  # direct alone would only show the double's own capacity
        ramp_s = max(0.5, count / STREAM_ARRIVAL)
        chunks = math.ceil((ramp_s + STREAM_OVERLAP_S) * 1000 / DRIP_GAP_MS)
        for target in list(active):
            for attempt in range(2):  # as in the sweep: a failed level is run once more
                with no_gc():
                    result = await constant_rate(
                        bench.endpoint(target, stream=True, drip=True, max_tokens=chunks),
                        count / ramp_s,
                        ramp_s,
                        stream=True,
                        max_connections=count,
                        drain_s=chunks * DRIP_GAP_MS / 1000 + 20,
                        on_tick=bench.peak_sampler(target),
                    )
                row = concurrency_row(target, count, chunks, result)
                row["attempt"] = attempt + 1
                levels.append(row)
                await bench.settle()
                if not row["stalled"]:
                    break
            else:
                active.remove(target)
    most = {
        t: max(
            (lv["streams"] for lv in levels if lv["target"] == t and not lv["stalled"]), default=0
        )
        for t in bench.targets
    }
    bench.results["concurrency"] = {"levels": levels, "most_streams": most}
    report.concurrency(levels, most, STALL_S)


def concurrency_row(target: str, count: int, chunks: int, result: RunResult) -> dict[str, Any]:
    # A stream is whole when every drip chunk arrived (gateways may add or merge the others).
    short = sum(1 for n in result.event_counts if n < chunks)
    stalls = sum(1 for g in result.max_gaps if g > STALL_S)
    return {
        "target": target,
        "streams": count,
        "chunks": chunks,
        "ok": result.ok - short,
        "errors": result.error_count,
        "error_kinds": result.errors,
        "stalls": stalls,
        "max_gap_ms": max(result.max_gaps, default=float("nan")) * 1e3,
        "gap_p99_ms": percentile(result.gaps, 99) * 1e3,
        "ttft_p99_ms": percentile(result.ttfts, 99) * 1e3,
        "incomplete": short,
        "stalled": bool(stalls or short or result.error_count),
    }


# -- phase 5: the pipeline's own cost -----------------------------------------------------------


def phase_pipeline(bench: Bench, cpus: set[int], workdir: Path) -> None:
    out = workdir / "pipeline_cost.json"
    cmd = [sys.executable, "-m", "bench.pipeline_cost", "--json", str(out)]
    cmd += ["--iterations", str(bench.plan.pipeline_iterations)]
    report.progress("pipeline cost (in process, engine excluded)")
    subprocess.run(
        cmd,
        cwd=REPO_ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )
    bench.results["pipeline"] = json.loads(out.read_text())
    report.pipeline(bench.results["pipeline"])


# -- the run ------------------------------------------------------------------------------------


def layout(client: set[int], gateway: set[int]) -> dict[str, str]:
    return {
        "load generator": _cores(client),
        "upstream double": _cores(client),
        "switchboard": _cores(gateway),
        "litellm": _cores(gateway),
        "pipeline cost": _cores(gateway),
    }


def _cores(cpus: set[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def meta(
    args: argparse.Namespace, plan: Plan, places: dict[str, str], litellm: Path | None
) -> dict[str, Any]:
    def out(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "command": shlex.join(["python", "-m", "bench.gateway_bench", *sys.argv[1:]]),
        "commit": out(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"]),
        "dirty": bool(out(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "gateway"])),
        "machine": f"{os.cpu_count()} CPUs, {cpu}, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "litellm": out([str(litellm.parent / "python"), "-c", _VERSION]) if litellm else None,
        "layout": places,
        "plan": plan.__dict__,
        "upstream": {
            "stream": {"chunks": STREAM_CHUNKS, "chunk_gap_ms": STREAM_GAP_MS},
            "drip": {
                "chunk_gap_ms": DRIP_GAP_MS,
                "arrival_per_s": STREAM_ARRIVAL,
                "overlap_s": STREAM_OVERLAP_S,
            },
        },
    }


_VERSION = "import importlib.metadata as m; print(m.version('litellm'))"


def cpu_layout(args: argparse.Namespace) -> tuple[set[int], set[int]]:
    available = sorted(os.sched_getaffinity(0))
    client = {int(c) for c in args.client_cpus.split(",")} if args.client_cpus else {available[0]}
    gateway = (
        {int(c) for c in args.gateway_cpus.split(",")}
        if args.gateway_cpus
        else {available[1] if len(available) > 1 else available[0]}
    )
    if client & gateway:
        report.progress("warning: the gateways share a core with the load generator")
    return client, gateway


PHASES = ("sequential", "sweep", "streams", "pipeline")


async def measure(bench: Bench, phases: set[str]) -> None:
    for target in bench.targets:  # first requests: imports, connection pools, caches
        client = Sequential(bench.endpoint(target))
        for _ in range(200):
            await client.one()
        client.close()
        # A short burst and a batch of concurrent streams before the idle sample, so that
        # "after" compares steady states: a process keeps the buffers its first peak needed
        # (pymalloc does not give arenas back), which is not growth under load.
        await constant_rate(bench.endpoint(target), WARM_RATE, 1.0)
        await constant_rate(bench.endpoint(target, stream=True), WARM_RATE, 1.0, stream=True)
    await bench.settle()
    await asyncio.sleep(2)
    for target in bench.rss:
        await bench.quiet(target, timeout_s=120)  # e.g. Switchboard loading its embedder
    await asyncio.sleep(2)
    bench.sample_rss("idle")
    if "sequential" in phases:
        await phase_sequential(bench)
        await bench.settle()
    if "sweep" in phases:
        await phase_sweep(bench)
    if "streams" in phases:
        await phase_streams(bench)
    await asyncio.sleep(3)
    bench.sample_rss("after")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rates and samples (~3 min)")
    parser.add_argument("--rates", help="comma-separated requests/s for the sweep")
    parser.add_argument("--duration", type=float, help="seconds per sweep rate")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the tables as Markdown here")
    parser.add_argument("--client-cpus", help="load generator and upstream (default: first)")
    parser.add_argument("--gateway-cpus", help="gateways and pipeline cost (default: second)")
    parser.add_argument(
        "--litellm",
        type=Path,
        default=REPO_ROOT / ".venv-litellm" / "bin" / "litellm",
        help="the LiteLLM proxy's executable (make bench installs it in .venv-litellm)",
    )
    parser.add_argument("--no-litellm", action="store_true", help="Switchboard and direct only")
    parser.add_argument(
        "--phases", default=",".join(PHASES), help=f"a subset of {','.join(PHASES)}"
    )
    args = parser.parse_args(argv)
    phases = set(args.phases.split(","))
    if phases - set(PHASES):
        parser.error(f"--phases: unknown {sorted(phases - set(PHASES))}")
    plan = Plan.for_args(args)
    client, gateway = cpu_layout(args)
    os.sched_setaffinity(0, client)
    if not args.no_litellm and not args.litellm.exists():
        parser.error(f"{args.litellm} not found: run `make bench`, or pass --no-litellm")
    places = layout(client, gateway)
    results: dict[str, Any] = {
        "meta": meta(args, plan, places, None if args.no_litellm else args.litellm)
    }
    report.header(results["meta"])
    started = time.monotonic()
    servers: dict[str, Server] = {}
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        workdir = Path(tmp)
        try:
            drip = f"chunk_gap_ms={DRIP_GAP_MS},chunks_from_max_tokens=1"
            servers["upstream"] = start_upstream(
                workdir, client, chunks=STREAM_CHUNKS, chunk_gap_ms=STREAM_GAP_MS, drip=drip
            )
            servers["direct"] = servers["upstream"]
            upstream_url = servers["upstream"].url
            report.progress("starting Switchboard" + ("" if args.no_litellm else " and LiteLLM"))
            servers["switchboard"] = start_switchboard(workdir, gateway, upstream_url)
            if not args.no_litellm:
                servers["litellm"] = start_litellm(workdir, gateway, upstream_url, args.litellm)
            bench = Bench(servers, plan)
            before = bench.cpu_snapshot()
            run(lambda: measure(bench, phases))
            results["meta"]["background_cpu"] = bench.background(before)
            results.update(bench.results)
            results["memory"] = bench.rss
            report.memory(bench.rss)
        finally:
            for server in {id(s): s for s in servers.values()}.values():
                server.stop()
        if "pipeline" in phases:
            phase_pipeline(bench, gateway, workdir)
            results["pipeline"] = bench.results["pipeline"]
    results["meta"]["elapsed_s"] = round(time.monotonic() - started, 1)
    report.summary(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if args.markdown:
        args.markdown.write_text(report.markdown(results))


if __name__ == "__main__":
    main()
