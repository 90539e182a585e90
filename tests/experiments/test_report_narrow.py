"""``gateway report`` in a narrow terminal: a block per row instead of columns cut to letters."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from gateway.config.loader import parse_config
from gateway.experiments.analysis import analyse
from gateway.experiments.report import print_table

CONFIG = """
models:
  m: {engine: vllm, urls: ["http://127.0.0.1:9"]}
routes:
  qa:
    sticky_key: user
    variants:
      prompted-with-a-long-name: {target: m, weight: 50}
      tuned: {target: m, weight: 50}
    experiment:
      metrics: {correct: {type: boolean}}
      min_samples: 5
      guardrails: {error_rate: {margin: 0.02}}
"""


def _report() -> dict[str, Any]:
    spec = parse_config(CONFIG, "test.yaml").routes["qa"]
    events, feedback = [], []
    for i in range(40):
        variant = "tuned" if i % 2 else "prompted-with-a-long-name"
        events.append(
            {"id": f"e{i}", "ts": float(i), "route": "qa", "variant": variant,
             "assignment": "sticky", "key_hash": f"k{i}", "status": "ok", "attempt": 0,
             "latency_ms": 100.0 + i, "prompt_tokens": 10, "completion_tokens": 3}
        )  # fmt: skip
        feedback.append(
            {"id": f"f{i}", "inference_id": f"e{i}", "name": "correct", "kind": "boolean",
             "value": float(i % 3 == 0), "ts": 100.0 + i}
        )  # fmt: skip
    return analyse("qa", spec, events, feedback)


def _render(width: int) -> str:
    out = io.StringIO()
    print_table(_report(), Console(file=out, width=width, color_system=None))
    return out.getvalue()


def test_at_80_columns_every_label_and_name_is_whole() -> None:
    text = _render(80)
    assert max(len(line) for line in text.splitlines()) <= 80
    for whole in ("prompted-with-a-long-name", "latency p50 ms", "cost/correct [95% CI]"):
        assert whole in text, whole
    # rich's shrinking would print truncated headers like "lat…"
    assert "…" not in text


def test_a_wide_terminal_keeps_the_columns() -> None:
    text = _render(250)
    header = next(line for line in text.splitlines() if "variant" in line and "units" in line)
    assert "requests" in header
