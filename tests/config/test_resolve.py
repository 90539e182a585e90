"""gateway.resolve: phase 2 names every broken reference at once, with the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.loader import load_config
from gateway.errors import ConfigError
from gateway.resolve import resolve
from gateway.settings import Settings

BROKEN = """
models:
  m1: {engine: vllm, urls: ["http://127.0.0.1:9"]}
routes:
  qa:
    variants:
      a: {target: m1, weight: 1}
      b: {target: ghost, pipeline: nope, weight: 1}
    fallback: [a, missing]
    shadow: [{variant: phantom, sample_rate: 0.5}]
aliases:
  gpt-4o: nowhere
  m1: qa
"""


def test_every_broken_reference_is_named(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(BROKEN)
    with pytest.raises(ConfigError) as info:
        resolve(load_config(path), Settings(home=tmp_path / "home"))
    problems = info.value.problems
    expected = [
        "routes.qa.variants.b.target: 'ghost' is not a model or adapter",
        "routes.qa.variants.b.pipeline: 'nope' is not a pipeline",
        "routes.qa.fallback[1]: 'missing' is not a variant of this route",
        "routes.qa.shadow[0].variant: 'phantom' is not a variant of this route",
        "aliases.gpt-4o: 'nowhere' is not a model, adapter or route",
        "aliases.m1: already the name of a model, adapter or route",
    ]
    for text in expected:
        assert any(p.startswith(text) and "Fix:" in p for p in problems), text
    assert str(path) in str(info.value)
