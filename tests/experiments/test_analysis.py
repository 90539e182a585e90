"""The analysis against figures computed by hand for fixed event sets."""

from __future__ import annotations

import math
from typing import Any

import pytest
from scipy import stats

from gateway.config.loader import parse_config
from gateway.experiments.analysis import analyse, wilson

CONFIG = """
models: {m: {engine: vllm, urls: ["http://127.0.0.1:9"]}}
routes:
  r:
    sticky_key: user
    allow_pin: true
    variants: {a: {target: m, weight: 50}, b: {target: m, weight: 50}, c: {target: m, weight: 0}}
    fallback: [a]
    experiment:
      metrics: {correct: {type: boolean}, rating: {type: float}}
      min_samples: 5
"""


def event(eid: str, variant: str, **kw: Any) -> dict[str, Any]:
    return {
        "id": eid,
        "ts": kw.pop("ts", 0.0),
        "route": "r",
        "variant": variant,
        "assignment": "sticky",
        "key_hash": kw.pop("key", eid),
        "shadow": False,
        "source": "online",
        "attempt": 0,
        "status": "ok",
        "latency_ms": 100.0,
        "cost": 0.001,
        **kw,
    }


def fb(eid: str, value: float, name: str = "correct", ts: float = 0.0) -> dict[str, Any]:
    return {"inference_id": eid, "name": name, "value": value, "ts": ts}


def spec(text: str = CONFIG) -> Any:
    return parse_config(text, "t.yaml").routes["r"]


def test_failed_requests_count_as_failures_and_intervals_are_per_key() -> None:
    events, feedback = [], []
    # a: 10 keys x 2 requests, 7 of 20 correct; b: 10 keys, 9 correct of 10 ok plus 2 errors.
    for i in range(20):
        events.append(event(f"a{i}", "a", key=f"ka{i // 2}", ts=float(i)))
        feedback.append(fb(f"a{i}", float(i < 7)))
    for i in range(12):
        ok = i < 10
        events.append(event(f"b{i}", "b", ts=float(i), status="ok" if ok else "error"))
        if ok:
            feedback.append(fb(f"b{i}", float(i < 9)))
    events.append(event("s", "a", shadow=True, status="error"))  # shadow: apart
    events.append(event("o", "a", source="offline", status="error"))  # offline: never
    feedback.append(fb("a19", 1.0, ts=99.0))  # a correction: the latest value wins
    report = analyse("r", spec(), events, feedback)
    a, b = report["variants"]["a"], report["variants"]["b"]
    assert (a["n"], a["units"], b["n"], b["errors"]) == (20, 10, 12, 2)
    assert b["metrics"]["correct"]["mean"] == pytest.approx(9 / 12)  # errors are failures
    # a per key: Y = (2,2,2,1,0,0,0,0,0,1), N = 2 each: delta-method variance by hand.
    ys, ns = [2, 2, 2, 1, 0, 0, 0, 0, 0, 1], [2] * 10
    r = sum(ys) / sum(ns)
    var = sum((y - r * n) ** 2 for y, n in zip(ys, ns, strict=True)) / sum(ns) ** 2 * 10 / 9
    fig = a["metrics"]["correct"]
    assert fig["mean"] == pytest.approx(r)
    half = float(stats.t.ppf(0.975, 9)) * math.sqrt(var)  # t on U - 1 = 9 df
    assert fig["ci95_one_look"] == pytest.approx([r - half, r + half])
    low, high = fig["ci95"]
    assert low < fig["ci95_one_look"][0] and high > fig["ci95_one_look"][1]  # always valid: wider
    assert report["apart"] == {"shadow": {"a": 1}}
    assert report["decision"]["status"] == "running" and report["decision"]["winner"] is None
    assert "Keep the experiment running" in report["verdict"]


def test_fallback_attempts_belong_to_the_assigned_variant() -> None:
    events = [
        event("b0", "b", key="k", status="error", ts=1.0),
        event("b0-1", "a", key="k", attempt=1, fallback_from="b", ts=1.1),
        # attempt 0 already on the fallback: b was cooling down and was skipped
        event("b1", "a", key="k", fallback_from="b", ts=2.0),
    ]
    report = analyse("r", spec(), events, [fb("b0-1", 1.0), fb("b1", 0.0)])
    assert report["variants"]["b"]["n"] == 2 and report["variants"]["a"]["n"] == 0
    assert report["variants"]["b"]["answered_by_fallback"] == 2
    assert report["variants"]["b"]["metrics"]["correct"]["mean"] == pytest.approx(0.5)
    assert report["sample_ratio"]["observed"] == {"a": 0, "b": 1}


def test_a_clear_winner_and_pinned_traffic_apart() -> None:
    events, feedback = [], []
    for variant, rate in (("a", 0.5), ("b", 0.8)):
        for i in range(400):
            eid = f"{variant}{i}"
            events.append(event(eid, variant, ts=float(i)))
            feedback.append(fb(eid, float((i * 7919) % 400 < rate * 400)))
    # Pinned requests to a that are all correct would turn the result round if compared.
    for i in range(2000):
        events.append(event(f"p{i}", "a", assignment="pinned", key=None, ts=float(i)))
        feedback.append(fb(f"p{i}", 1.0))
    report = analyse("r", spec(), events, feedback)
    d = report["decision"]
    assert d["status"] == "winner" and d["winner"] == "b" and d["beats"] == ["a"]
    assert d["safe_to_act"] is True
    assert report["apart"]["pinned"] == {"a": 2000}
    assert report["verdict"].startswith("'b' beats 'a' on correct")
    # The weight-0 variant 'c' is no arm: it never blocks the decision.
    assert all("c" not in (x["variant"], x["against"]) for x in report["comparisons"])


def test_sample_ratio_counts_keys_not_requests() -> None:
    # 60 keys on a, 40 on b with ten times as many requests each on b: balanced requests,
    # unbalanced keys. A mismatch is about keys.
    events = [event(f"a{i}", "a", key=f"a{i}") for i in range(600)]
    events += [event(f"b{i}", "b", key=f"b{i % 400}") for i in range(400)]
    report = analyse("r", spec(), events, [])
    assert report["sample_ratio"]["observed"] == {"a": 600, "b": 400}
    assert report["sample_ratio"]["mismatch"] is True
    assert report["decision"]["status"] == "sample_ratio_mismatch"
    assert report["verdict"].startswith("Sample ratio mismatch")
    balanced = [event(f"a{i}", "a", key=f"a{i % 10}") for i in range(600)]
    balanced += [event(f"b{i}", "b", key=f"b{i % 10}") for i in range(60)]
    assert analyse("r", spec(), balanced, [])["sample_ratio"]["mismatch"] is False


def test_a_guardrail_breach_blocks_the_winner() -> None:
    text = CONFIG.replace(
        "min_samples: 5", "min_samples: 5\n      guardrails: {error_rate: {margin: 0.05}}"
    )
    events, feedback = [], []
    for variant, rate, errors in (("a", 0.5, 0), ("b", 0.9, 120)):
        for i in range(400):
            eid = f"{variant}{i}"
            failed = i < errors
            events.append(event(eid, variant, ts=float(i), status="error" if failed else "ok"))
            if not failed:
                feedback.append(fb(eid, 1.0 if (i * 7919) % 400 < rate * 400 else 0.0))
    report = analyse("r", spec(text), events, feedback)
    d = report["decision"]
    assert d["status"] == "guardrail_breach" and d["winner"] is None
    assert d["breaches"][0]["variant"] == "b" and d["breaches"][0]["metric"] == "error_rate"
    assert report["verdict"].startswith("Do not promote")


def test_planned_samples_use_one_look_only_when_reached() -> None:
    text = CONFIG.replace("min_samples: 5", "min_samples: 5\n      planned_samples: 300")
    events, feedback = [], []
    for variant, rate in (("a", 0.5), ("b", 0.6)):
        for i in range(200):
            eid = f"{variant}{i}"
            events.append(event(eid, variant, ts=float(i)))
            feedback.append(fb(eid, float((i * 7919) % 200 < rate * 200)))
    report = analyse("r", spec(text), events, feedback)
    assert report["decision"]["status"] == "running"
    primary = next(c for c in report["comparisons"] if c["primary"])
    assert primary["reached"] is False and primary["p_value"] is None


def test_wilson_edge_cases() -> None:
    assert wilson(0, 0).mean is None
    est = wilson(7, 10)
    assert est.low is not None and est.high is not None and est.low < 0.7 < est.high


def test_latency_p95_guardrail() -> None:
    text = CONFIG.replace(
        "min_samples: 5", "min_samples: 5\n      guardrails: {latency_p95: {margin: 100}}"
    )
    events = []
    for variant, slow_share in (("a", 0.0), ("b", 0.3)):
        for i in range(400):
            latency = 1000.0 if (i * 7919) % 400 < slow_share * 400 else 100.0 + i % 50
            events.append(event(f"{variant}{i}", variant, ts=float(i), latency_ms=latency))
    report = analyse("r", spec(text), events, [])
    row = next(g for g in report["guardrails"] if g["metric"] == "latency_p95")
    assert row["breach"] is True and report["decision"]["status"] == "guardrail_breach"
    fine = [e for e in events if e["variant"] == "a"]
    fine += [{**e, "id": "b" + e["id"], "variant": "b", "key_hash": "b" + e["id"]} for e in fine]
    row = next(g for g in analyse("r", spec(text), fine, [])["guardrails"])
    assert row["breach"] is False


@pytest.mark.filterwarnings("error")
def test_a_metric_value_whose_square_overflows_is_no_interval_not_an_error() -> None:
    events = [event(f"e{i}", "ab"[i % 2]) for i in range(20)]
    feedback = [fb(f"e{i}", 1e300 if i < 2 else float(i), name="rating") for i in range(20)]
    report = analyse("r", spec(), events, feedback)
    assert report["variants"]["a"]["metrics"]["rating"]["ci95"] == [None, None]
    assert report["decision"]["status"] == "running"
