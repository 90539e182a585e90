"""The evaluation runner on an in-process gateway with scripted engines.

Paired runs by the live code path, the event log's offline rows, resuming after an
interruption, failed calls, the HTTP backend (``--url``) and the checks that keep a resumed run
from mixing settings.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from typer.testing import CliRunner

from gateway.adapters.training_data import read_training_data
from gateway.app import create_app
from gateway.cli.main import app as app_cli
from gateway.config.loader import parse_config
from gateway.datasets import split_of
from gateway.engines.supervisor import free_port
from gateway.errors import EngineUnavailableError, EvalError
from gateway.evaluation.backends import HttpBackend, InProcessBackend, variant_infos
from gateway.evaluation.data import EvalData, read_eval_data
from gateway.evaluation.learned import learned_from_config
from gateway.evaluation.report import summarise, write_reports
from gateway.evaluation.run import load_results, plan_run, results_path, run
from gateway.evaluation.scoring import ScorerSpec
from gateway.learned import ADAPTER_FILE, Learned, write_learned
from gateway.settings import Settings
from tests.evaluation.test_data import ids, mc, write
from tests.support.adapter_fakes import make_adapter
from tests.support.fakes import FakeEngine, completion

CONFIG = """
models:
  m1:
    engine: vllm
    urls: ["http://127.0.0.1:9"]
    pricing: {prompt_per_1m: 1000000, completion_per_1m: 2000000}
  m2: {engine: vllm, urls: ["http://127.0.0.1:9"]}
routes:
  qa:
    variants:
      oracle: {target: m1, weight: 50}
      always_a: {target: m2, weight: 50, params: {temperature: 0.0}}
    experiment: {metrics: {correct: {type: boolean}}, min_samples: 2}
"""
GOLD = "ABCABC"


class Scripted(FakeEngine):
    """Answers with the gold letter of the question it recognises, or always ``fixed``.

    ``allow`` calls go through; later calls wait until ``gate`` is set (an interruptible run).
    """

    def __init__(self, model_id: str, gold: dict[str, str] | None = None, fixed: str = "A") -> None:
        super().__init__(model_id)
        self.gold = gold or {}
        self.fixed = fixed
        self.allow: int | None = None
        self.gate = asyncio.Event()
        self.waiting = 0

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        self.bodies.append(body)
        if self.allow is not None and len(self.bodies) > self.allow:
            self.waiting += 1
            try:
                await self.gate.wait()
            finally:
                self.waiting -= 1
        if self.fail_with is not None:
            raise self.fail_with
        text = body["messages"][-1]["content"]
        letter = next((a for q, a in self.gold.items() if q in text), self.fixed)
        return completion(f"Let me think.\nAnswer: {letter}")


@pytest.fixture
def data(tmp_path: Path) -> EvalData:
    held = ids("heldout", len(GOLD))
    path = write(tmp_path / "items.jsonl", *(mc(i, a) for i, a in zip(held, GOLD, strict=True)))
    return read_eval_data(path)[0]


def engines(data: EvalData) -> dict[str, Scripted]:
    gold = {f"Question {item.id}?": str(item.expected) for item in data.items}
    return {"m1": Scripted("m1", gold), "m2": Scripted("m2")}


async def test_paired_run_by_the_live_path_logs_offline_events(
    gateway: Any, data: EvalData, tmp_path: Path
) -> None:
    fakes = engines(data)
    async with gateway(fakes, CONFIG) as (_client, raw):
        state = gateway.state
        backend = InProcessBackend(state)
        available = await backend.variants("qa")
        assert set(available) == {"oracle", "always_a"}
        plan = plan_run(
            tmp_path / "out",
            "qa",
            available,
            list(available),
            data,
            ScorerSpec("mc"),
            limit=None,
            target="in process",
        )
        assert await run(plan, backend, concurrency=3) == 12
        # The variant's settings were applied as for live traffic (params override).
        assert all(body["temperature"] == 0.0 for body in fakes["m2"].bodies)
        assert all("switchboard" not in body for body in fakes["m1"].bodies)
        await state.events.flush()
        rows = state.events.store.events("qa")
        feedback = state.events.store.feedback("qa")
        report = (await raw.get("/v1/experiments/qa")).json()
    assert len(rows) == 12
    assert {(r["source"], r["run_id"], r["assignment"]) for r in rows} == {
        ("offline", plan.run_id, "offline")
    }
    assert {r["answer"] for r in rows if r["variant"] == "always_a"} == {"A"}
    assert sorted(f["value"] for f in feedback) == [0.0] * 4 + [1.0] * 8
    assert {f["name"] for f in feedback} == {"correct"}
    # The online experiment ignores the run; its offline section shows it.
    assert report["variants"]["oracle"]["n"] == 0
    [offline] = report["offline"]
    assert offline["run_id"] == plan.run_id
    assert offline["variants"]["oracle"]["accuracy"]["mean"] == 1.0
    assert offline["variants"]["always_a"]["accuracy"]["mean"] == pytest.approx(2 / 6)
    assert offline["variants"]["oracle"]["cost"] == pytest.approx(7.0)

    records = {v: load_results(plan.out, v) for v in plan.variants}
    summary = summarise(plan.manifest, plan.items, records)
    oracle, always_a = summary["variants"]["oracle"], summary["variants"]["always_a"]
    assert summary["complete"] and summary["items"] == 6
    assert oracle["accuracy"]["mean"] == 1.0 and always_a["accuracy"]["mean"] == pytest.approx(
        1 / 3
    )
    assert always_a["answers"] == {"A": 6} and oracle["answers"] == {"A": 2, "B": 2, "C": 2}
    # m1 is priced at 1 per prompt token and 2 per completion token: 3 + 2 * 2 = 7 a request.
    assert oracle["cost"] == {"total": 42.0, "per_request": 7.0, "per_correct": 7.0}
    assert always_a["cost"]["per_request"] == 0.0
    assert oracle["prompt_tokens"] == 3 and oracle["calls"] == 1
    [pair] = summary["comparisons"]
    assert (pair["a"], pair["b"], pair["n"]) == ("oracle", "always_a", 6)
    assert pair["table"] == {"both": 2, "a_only": 4, "b_only": 0, "neither": 0}
    assert pair["difference"] == pytest.approx(-4 / 6)
    # 4 discordant pairs, all one way: mid-p = 2 / 2^4 - 1 / 2^4; one pair, so Holm keeps it.
    assert pair["mcnemar"]["p_value"] == pytest.approx(1 / 16)
    assert pair["mcnemar"]["p_adjusted"] == pytest.approx(1 / 16)
    json_path, html_path = write_reports(plan.out, summary, records)
    assert json.loads(json_path.read_text())["variants"]["oracle"]["n"] == 6
    page = html_path.read_text()
    assert page.count("<svg") == 4 and "<script" not in page and "http" not in page


async def test_interrupted_run_resumes_where_it_stopped(
    gateway: Any, data: EvalData, tmp_path: Path
) -> None:
    fakes = engines(data)
    fakes["m1"].allow = 2  # oracle answers two items, then hangs until interrupted
    out = tmp_path / "out"
    async with gateway(fakes, CONFIG) as (_client, _raw):
        state = gateway.state
        backend = InProcessBackend(state)
        available = await backend.variants("qa")
        plan = plan_run(
            out,
            "qa",
            available,
            ["oracle", "always_a"],
            data,
            ScorerSpec("mc"),
            limit=None,
            target="in process",
        )
        task = asyncio.create_task(run(plan, backend, concurrency=2))
        while fakes["m1"].waiting < 2:  # both workers stuck on the oracle
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        first = {v: load_results(out, v) for v in plan.variants}
        assert len(first["oracle"]) == 2 and 2 <= len(first["always_a"]) < 6
        partial = summarise(plan.manifest, plan.items, first)
        assert not partial["complete"] and partial["comparisons"][0]["n"] == 2
        write_reports(out, partial, first)
        assert json.loads((out / "report.json").read_text())["complete"] is False

        calls_before = len(fakes["m1"].bodies) + len(fakes["m2"].bodies)
        fakes["m1"].allow = None
        again = plan_run(
            out,
            "qa",
            available,
            ["oracle", "always_a"],
            data,
            ScorerSpec("mc"),
            limit=None,
            target="in process",
        )
        assert again.run_id == plan.run_id
        written = await run(again, backend, concurrency=2)
        await state.events.flush()
        rows = state.events.store.events("qa")
    finished_before = len(first["oracle"]) + len(first["always_a"])
    assert written == 12 - finished_before
    # Only what was missing ran again (plus nothing else).
    assert len(fakes["m1"].bodies) + len(fakes["m2"].bodies) - calls_before == written
    for variant in ("oracle", "always_a"):
        lines = results_path(out, variant).read_text().splitlines()
        assert sorted(json.loads(line)["item"] for line in lines) == sorted(
            i.id for i in data.items
        )
    assert sum(r["status"] == "cancelled" for r in rows) == 2
    assert {r["run_id"] for r in rows} == {plan.run_id}
    final = summarise(
        again.manifest, again.items, {v: load_results(out, v) for v in again.variants}
    )
    assert final["complete"] and final["variants"]["oracle"]["accuracy"]["mean"] == 1.0


async def test_failed_calls_are_errors_and_are_retried(
    gateway: Any, data: EvalData, tmp_path: Path
) -> None:
    fakes = engines(data)
    fakes["m2"].fail_with = EngineUnavailableError("engine down")
    async with gateway(fakes, CONFIG) as (_client, _raw):
        backend = InProcessBackend(gateway.state)
        available = await backend.variants("qa")
        plan = plan_run(
            tmp_path / "o",
            "qa",
            available,
            ["always_a"],
            data,
            ScorerSpec("mc"),
            limit=3,
            target="in process",
        )
        await run(plan, backend)
        records = load_results(plan.out, "always_a")
        assert [r["status"] for r in records.values()] == ["error"] * 3
        assert {r["error_code"] for r in records.values()} == {"engine_unavailable"}
        summary = summarise(plan.manifest, plan.items, {"always_a": records})
        assert summary["variants"]["always_a"]["errors"] == 3
        assert summary["variants"]["always_a"]["accuracy"]["mean"] == 0.0
        fakes["m2"].fail_with = None
        assert await run(plan, backend) == 3  # the rerun tries the failed items again
    statuses = [r["status"] for r in load_results(plan.out, "always_a").values()]
    assert statuses == ["ok"] * 3


async def test_http_backend_matches_in_process(
    gateway: Any, data: EvalData, tmp_path: Path
) -> None:
    async with gateway(engines(data), CONFIG) as (_client, raw):
        backend = HttpBackend(raw)
        available = await backend.variants("qa")
        assert available["always_a"].params == {"temperature": 0.0}
        plan = plan_run(
            tmp_path / "o",
            "qa",
            available,
            ["oracle"],
            data,
            ScorerSpec("mc"),
            limit=4,
            target="http://gw",
        )
        assert await run(plan, backend) == 4
        records = load_results(plan.out, "oracle")
        assert all(r["correct"] and r["cost"] == 7.0 for r in records.values())
        state = gateway.state
        await state.events.flush()
        scores = state.events.store.feedback("qa")
        assert len(scores) == 4 and all(s["value"] == 1.0 for s in scores)
        # The evaluation API refuses what it cannot do, in OpenAI's error shape.
        unknown = await raw.get("/v1/evaluations/routes/nope")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "route_not_found"
        bad_variant = await raw.post(
            "/v1/evaluations/calls",
            json={"route": "qa", "variant": "zzz", "run_id": "r1", "request": {}},
        )
        assert bad_variant.status_code == 404
        bad_run = await raw.post("/v1/evaluations/calls", json={"route": "qa", "variant": "oracle"})
        assert bad_run.status_code == 400
        hello = {"model": "qa", "messages": [{"role": "user", "content": "hi"}]}
        live = await raw.post("/v1/chat/completions", json=hello)
        foreign = await raw.post(
            "/v1/evaluations/scores",
            json={
                "run_id": plan.run_id,
                "inference_id": live.headers["x-switchboard-inference-id"],
                "correct": True,
            },
        )
        assert foreign.status_code == 400 and "not an offline call" in foreign.text
        # A bad item request is that item's error, not the run's.
        outcome = await raw.post(
            "/v1/evaluations/calls",
            json={"route": "qa", "variant": "oracle", "run_id": "r1", "request": {"model": "qa"}},
        )
        assert outcome.status_code == 200 and outcome.json()["status"] == "error"


async def test_a_resumed_run_must_be_the_same_evaluation(
    gateway: Any, data: EvalData, tmp_path: Path
) -> None:
    async with gateway(engines(data), CONFIG) as (_client, _raw):
        backend = InProcessBackend(gateway.state)
        available = await backend.variants("qa")

        def plan(**change: Any) -> Any:
            args: dict[str, Any] = {
                "route": "qa",
                "variants": available,
                "chosen": ["oracle"],
                "data": data,
                "scorer": ScorerSpec("mc"),
            }
            args.update(change)
            return plan_run(tmp_path / "o", limit=2, target="t", **args)

        first = plan()
        assert plan(chosen=["oracle", "always_a"]).run_id == first.run_id  # adding a variant
        with pytest.raises(EvalError, match="scored with"):
            plan(scorer=ScorerSpec("exact"))
        with pytest.raises(EvalError, match="route 'qa', not 'other'"):
            plan(route="other")
        changed = dict(available)
        changed["oracle"] = type(available["oracle"])("oracle", "m2", "plain", {})
        with pytest.raises(EvalError, match="variant 'oracle' changed"):
            plan(variants=changed)
        other = write(tmp_path / "other.jsonl", mc(ids("heldout", 1)[0]))
        with pytest.raises(EvalError, match="different data"):
            plan(data=read_eval_data(other)[0])
        (tmp_path / "o" / "run.json").write_text("{broken")
        with pytest.raises(EvalError, match="unreadable"):
            plan()


def test_the_command_on_a_served_gateway_with_url(
    data: EvalData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`gateway eval --url` over real HTTP: a gateway served by uvicorn in a thread."""
    monkeypatch.setenv("GATEWAY_HOME", str(tmp_path / "home"))
    app = create_app(
        parse_config(CONFIG, "served.yaml"), Settings(home=tmp_path / "home"), engines=engines(data)
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{server.config.port}"
        out = tmp_path / "run"
        args = ["eval", "--data", str(data.path), "--route", "qa", "--url", url, "--out", str(out)]
        result = CliRunner().invoke(app_cli, args)
        assert result.exit_code == 0, result.output
        report = json.loads((out / "report.json").read_text())
        assert report["gateway"] == url and report["complete"]
        assert report["variants"]["oracle"]["accuracy"]["mean"] == 1.0
        assert report["variants"]["always_a"]["answers"] == {"A": 6}
        unknown = CliRunner().invoke(app_cli, [*args[:4], "nope", *args[5:]])
        assert unknown.exit_code == 2 and "No route named 'nope'" in unknown.output
    finally:
        server.should_exit = True
        thread.join(10)
    down = CliRunner().invoke(app_cli, args)
    assert down.exit_code == 2 and "cannot reach the gateway" in down.output


def test_a_users_own_file_is_evaluated_whole_and_learned_items_left_out(tmp_path: Path) -> None:
    # Six items with the user's own ids, some on the train side of the packaged split's hash:
    # no adapter or bank learned from them, so all six are evaluated.
    rows = [mc(f"mine-{n}", GOLD[n]) for n in range(6)]
    assert {split_of(str(r["id"])) for r in rows} == {"train", "heldout"}
    data, spec = read_eval_data(write(tmp_path / "mine.jsonl", *rows))
    assert len(data.items) == 6 and data.skipped_train == 0
    make_adapter(tmp_path / "adapters", "tuned", base="m1")
    cfg = parse_config(
        CONFIG.replace("oracle: {target: m1", "oracle: {target: tuned")
        + f"adapters: {{folders: [{tmp_path / 'adapters'}]}}\n",
        "test.yaml",
    )
    settings = Settings(home=tmp_path / "home")
    route = cfg.routes["qa"]
    targets = {name: (v.target, v.pipeline) for name, v in route.variants.items()}

    def plan(out: str) -> Any:
        infos = variant_infos(route, learned_from_config(cfg, settings, targets))
        chosen = list(infos)
        return plan_run(tmp_path / out, "qa", infos, chosen, data, spec, limit=None, target="t")

    untrained = plan("o1")
    assert "no learned_from.json" in untrained.manifest["data"]["notes"][0]
    assert len(untrained.items) == 6
    # The adapter is trained on two of the items (its record, as training writes it): exactly
    # those two are left out, for both variants, and counted against the adapter's variant.
    seen = [r for r in rows if split_of(str(r["id"])) == "train"][:2]
    training = read_training_data(write(tmp_path / "train.jsonl", *seen))
    ids = frozenset(i for c in training.conversations for i in c.content_ids)
    write_learned(tmp_path / "adapters" / "tuned" / ADAPTER_FILE, Learned("adapter", "tuned", ids))
    trained = plan("o2")
    assert [i.id for i in trained.items] == [r["id"] for r in rows if r not in seen]
    assert trained.manifest["data"]["left_out"]["learned"] == {"oracle": 2, "always_a": 0}
    assert trained.manifest["data"]["notes"] == []


CASCADE = """
models:
  m1: {engine: vllm, urls: ["http://127.0.0.1:9"]}
routes:
  qa:
    variants:
      cheap: {target: m1, weight: 1, params: {temperature: 0.0}}
      dear: {target: m1}
      both:
        cascade:
          - {variant: cheap, accept: {answer_prob: 0.6}}
          - {variant: dear}
"""


def test_a_resumed_cascade_run_must_have_the_same_steps(data: EvalData, tmp_path: Path) -> None:
    """A cascade's cached answers hold for its steps' rules and settings: changing either, even
    for a step variant the run does not evaluate, refuses the resumption rather than mixing."""

    def plan(config: str) -> Any:
        infos = variant_infos(parse_config(config, "test.yaml").routes["qa"])
        return plan_run(
            tmp_path / "o", "qa", infos, ["both"], data, ScorerSpec("mc"), limit=2, target="t"
        )

    first = plan(CASCADE)
    steps = first.manifest["variants"]["both"]["cascade"]
    assert [s["variant"] for s in steps] == ["cheap", "dear"]
    assert steps[0]["accept"] == {"answer_prob": 0.6}
    assert plan(CASCADE).run_id == first.run_id  # the same cascade resumes
    with pytest.raises(EvalError, match="variant 'both' changed"):
        plan(CASCADE.replace("answer_prob: 0.6", "answer_prob: 0.8"))
    with pytest.raises(EvalError, match="variant 'both' changed"):
        plan(CASCADE.replace("temperature: 0.0", "temperature: 0.5"))


def test_a_cascade_alone_leaves_out_what_its_steps_learned(tmp_path: Path) -> None:
    """Evaluated without its steps, a cascade still never meets an item its student was
    trained on: it has learned what each of its steps learned."""
    rows = [mc(f"mine-{n}", GOLD[n]) for n in range(6)]
    data, spec = read_eval_data(write(tmp_path / "mine.jsonl", *rows))
    make_adapter(tmp_path / "adapters", "tuned", base="m1")
    seen = [r for r in rows if split_of(str(r["id"])) == "train"][:2]
    training = read_training_data(write(tmp_path / "train.jsonl", *seen))
    ids = frozenset(i for c in training.conversations for i in c.content_ids)
    write_learned(tmp_path / "adapters" / "tuned" / ADAPTER_FILE, Learned("adapter", "tuned", ids))
    cfg = parse_config(
        CASCADE.replace("cheap: {target: m1", "cheap: {target: tuned")
        + f"adapters: {{folders: [{tmp_path / 'adapters'}]}}\n",
        "test.yaml",
    )
    route = cfg.routes["qa"]
    targets = {name: (v.target, v.pipeline) for name, v in route.variants.items()}
    infos = variant_infos(route, learned_from_config(cfg, Settings(home=tmp_path / "h"), targets))
    assert infos["both"].learned.ids == infos["cheap"].learned.ids == ids
    plan = plan_run(tmp_path / "o", "qa", infos, ["both"], data, spec, limit=None, target="t")
    assert [i.id for i in plan.items] == [r["id"] for r in rows if r not in seen]
    assert plan.manifest["data"]["left_out"]["learned"] == {"both": 2}


def test_the_report_sweeps_a_cascade_that_never_escalated(data: EvalData, tmp_path: Path) -> None:
    """The report takes the cascade's steps from the run's manifest: with its last step's
    variant evaluated too, every threshold is known although no item escalated."""
    infos = variant_infos(parse_config(CASCADE, "test.yaml").routes["qa"])
    plan = plan_run(
        tmp_path / "o", "qa", infos, ["both", "dear"], data, ScorerSpec("mc"), limit=3,
        target="t",
    )  # fmt: skip
    ids = [item.id for item in plan.items]
    step = {"variant": "cheap", "answer": "B", "confidence": 0.9, "calls": 1, "cost": 1.0}
    records = {
        "both": {
            i: {"item": i, "status": "ok", "expected": "A", "answer": "B", "correct": False,
                "extracted": "B", "calls": 1, "steps": [{**step, "rule": {"answer_prob": 0.6}}]}
            for i in ids
        },
        "dear": {
            i: {"item": i, "status": "ok", "expected": "A", "answer": "A", "correct": True,
                "extracted": "A", "calls": 5, "cost": 10.0}
            for i in ids
        },
    }  # fmt: skip
    sweep = summarise(plan.manifest, plan.items, records)["cascades"]["both"]
    assert sweep["last"] == "dear"
    by = {p["threshold"]: p for p in sweep["points"]}
    assert by[0.6]["accuracy"] == 0 and by[0.6]["escalated"] == 0
    assert by[1.0]["accuracy"] == 1 and by[1.0]["unknown"] == 0 and by[1.0]["calls"] == 6


async def test_the_http_backend_describes_a_cascade_as_in_process(gateway: Any) -> None:
    async with gateway({"m1": Scripted("m1")}, CASCADE) as (_client, raw):
        remote = await HttpBackend(raw).variants("qa")
        local = await InProcessBackend(gateway.state).variants("qa")
    assert remote["both"].fingerprint() == local["both"].fingerprint()
    assert [s["variant"] for s in remote["both"].cascade or []] == ["cheap", "dear"]
