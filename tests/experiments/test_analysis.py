"""The analysis against figures computed by hand for a fixed event set."""

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
    variants: {a: {target: m, weight: 50}, b: {target: m, weight: 50}}
    experiment:
      metrics: {correct: {type: boolean}, rating: {type: float}}
      min_samples: 10
"""


def events_and_feedback() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    events, feedback = [], []
    # a: 10 ok events (6 correct), latency 100..190; b: 10 ok (9 correct) + 2 errors.
    for variant, n, correct, errors in (("a", 10, 6, 0), ("b", 10, 9, 2)):
        for i in range(n + errors):
            eid = f"{variant}{i}"
            ok = i < n
            events.append(
                {
                    "id": eid,
                    "ts": float(i),
                    "route": "r",
                    "variant": variant,
                    "assignment": "sticky",
                    "shadow": False,
                    "source": "online",
                    "status": "ok" if ok else "error",
                    "latency_ms": 100.0 + 10 * i,
                    "prompt_tokens": 10,
                    "completion_tokens": 5,
                    "cost": 0.001,
                }
            )
            if ok:
                feedback.append(
                    {
                        "inference_id": eid,
                        "name": "correct",
                        "value": float(i < correct),
                        "ts": float(i),
                    }
                )
                feedback.append(
                    {
                        "inference_id": eid,
                        "name": "rating",
                        "value": float(i % 5) + (1 if variant == "b" else 0),
                        "ts": float(i),
                    }
                )
    # A shadow event and an offline event never count.
    events.append(
        {
            "id": "s",
            "ts": 0.0,
            "route": "r",
            "variant": "a",
            "shadow": True,
            "status": "error",
            "source": "online",
        }
    )
    events.append(
        {
            "id": "o",
            "ts": 0.0,
            "route": "r",
            "variant": "a",
            "shadow": False,
            "status": "error",
            "source": "offline",
        }
    )
    # A corrected answer: the latest feedback wins.
    feedback.append({"inference_id": "a9", "name": "correct", "value": 1.0, "ts": 99.0})
    return events, feedback


def test_report_figures_match_hand_computation() -> None:
    config = parse_config(CONFIG, "t.yaml")
    events, feedback = events_and_feedback()
    report = analyse("r", config.routes["r"], events, feedback)
    a, b = report["variants"]["a"], report["variants"]["b"]
    assert (a["n"], b["n"]) == (10, 12)
    assert a["errors"] == 0 and b["errors"] == 2
    assert b["error_rate"]["mean"] == pytest.approx(2 / 12)
    # p50 of 100..190 is 145; p95 is 100 + 0.95 * 9 * 10 = 185.5
    assert a["latency_ms"]["p50"] == pytest.approx(145.0)
    assert a["latency_ms"]["p95"] == pytest.approx(185.5)
    # a: 7 of 10 correct after the correction. Wilson by hand:
    p, n, z = 0.7, 10, 1.959963984540054
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert a["metrics"]["correct"]["mean"] == pytest.approx(0.7)
    assert a["metrics"]["correct"]["ci95"] == pytest.approx([centre - half, centre + half])
    # b vs a on correct: 9/10 vs 7/10, pooled two-proportion z-test by hand.
    comparison = next(c for c in report["comparisons"] if c["metric"] == "correct")
    pooled = 16 / 20
    zstat = 0.2 / math.sqrt(pooled * (1 - pooled) * (2 / 10))
    assert comparison["difference"] == pytest.approx(0.2)
    assert comparison["p_value"] == pytest.approx(2 * (1 - stats.norm.cdf(zstat)))
    # rating: b is a + 1 exactly; Welch by hand (equal variances, n = 10 each).
    rating = next(c for c in report["comparisons"] if c["metric"] == "rating")
    values = [float(i % 5) for i in range(10)]
    var = sum((v - 2.0) ** 2 for v in values) / 9
    t = 1.0 / math.sqrt(2 * var / 10)
    df = (2 * var / 10) ** 2 / (2 * (var / 10) ** 2 / 9)
    assert rating["difference"] == pytest.approx(1.0)
    assert rating["p_value"] == pytest.approx(2 * stats.t.sf(t, df))
    assert report["sample_ratio"]["mismatch"] is False
    assert "No significant difference" in report["verdict"]


def test_verdicts() -> None:
    config = parse_config(CONFIG.replace("min_samples: 10", "min_samples: 50"), "t.yaml")
    events, feedback = events_and_feedback()
    report = analyse("r", config.routes["r"], events, feedback)
    assert report["verdict"].startswith("Not enough data yet for 'correct'")
    # A clear winner with enough data.
    big_events, big_feedback = [], []
    for variant, rate in (("a", 0.5), ("b", 0.8)):
        for i in range(200):
            eid = f"{variant}{i}"
            big_events.append(
                {
                    "id": eid,
                    "ts": 0.0,
                    "route": "r",
                    "variant": variant,
                    "assignment": "random",
                    "status": "ok",
                    "latency_ms": 1.0,
                }
            )
            big_feedback.append(
                {"inference_id": eid, "name": "correct", "value": float(i < rate * 200), "ts": 0.0}
            )
    report = analyse("r", config.routes["r"], big_events, big_feedback)
    assert report["verdict"].startswith("'b' beats 'a' on correct: +0.3")


def test_sample_ratio_mismatch_is_flagged() -> None:
    config = parse_config(CONFIG, "t.yaml")
    events = [
        {
            "id": f"{v}{i}",
            "ts": 0.0,
            "route": "r",
            "variant": v,
            "assignment": "sticky",
            "status": "ok",
            "latency_ms": 1.0,
        }
        for v, n in (("a", 600), ("b", 400))
        for i in range(n)
    ]
    report = analyse("r", config.routes["r"], events, [])
    assert report["sample_ratio"]["mismatch"] is True
    assert report["verdict"].startswith("Sample ratio mismatch")


def test_statistics_helpers_edge_cases() -> None:
    assert wilson(0, 0).mean is None
    assert two_proportion(1, 0, 1, 1) is None
    assert welch([1.0], [2.0, 3.0]) is None
    result = welch([1.0, 1.0], [1.0, 1.0])
    assert result is not None and result[3] == 1.0
