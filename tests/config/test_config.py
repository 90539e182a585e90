"""gateway.yaml: both phases, and that every error names the file, the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.config.loader import load_config, parse_config
from gateway.config.schema import LiteLLMModel, VLLMModel
from gateway.errors import ConfigError
from gateway.resolve import resolve
from gateway.settings import Settings


def test_embedded_default_serves_smollm2_on_a_launched_vllm() -> None:
    config = load_config(None)
    spec = config.models["smollm2"]
    assert isinstance(spec, VLLMModel)
    assert spec.launch is not None and spec.launch.model == "packaged:smollm2-135m-instruct"
    assert config.server.host == "127.0.0.1" and config.server.port == 8080


def test_all_engine_kinds_parse() -> None:
    config = parse_config(
        """
models:
  local: {engine: vllm, launch: {model: /models/x, args: [--max-model-len=1024]}}
  fleet: {engine: vllm, urls: ["http://10.0.0.1:8000/", "http://10.0.0.2:8000"],
          upstream_model: meta-llama/Llama-3.1-8B-Instruct}
  hosted: {engine: litellm, model: openai/gpt-4o-mini, api_key_env: OPENAI_API_KEY}
""",
        "g.yaml",
    )
    fleet = config.models["fleet"]
    assert isinstance(fleet, VLLMModel)
    assert fleet.urls == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
    assert isinstance(config.models["hosted"], LiteLLMModel)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "models: {m: {engine: vllm, urls: [http://h:1], tmeout_s: 3}}",
            ["models.m.tmeout_s: unknown key", "Fix: remove it"],
        ),
        (
            "models: {m: {engine: vlm, urls: [http://h:1]}}",
            ["models.m.engine: 'vlm' is not an engine", "'vllm' or 'litellm'"],
        ),
        ("models: {m: {urls: [http://h:1]}}", ["models.m: no 'engine' key"]),
        ("models: {m: {engine: vllm}}", ["models.m: set exactly one of 'launch'"]),
        ("models: {m: {engine: vllm, urls: [ftp://h]}}", ["models.m.urls: 'ftp://h' is not"]),
        ("models: {m: {engine: litellm}}", ["models.m.model: required key is missing"]),
        ("models: {}", ["models:"]),
        (
            "server: {port: 99999}\nmodels: {m: {engine: vllm, urls: [http://h:1]}}",
            ["server.port:"],
        ),
        (
            "models: {m: {engine: vllm, launch: {model: x, args: [--port, '9']}}}",
            ["'--port' is set by the gateway"],
        ),
        ("models: {'bad name': {engine: vllm, urls: [http://h:1]}}", ["model id 'bad name'"]),
        ("models: [1, 2]", ["models:"]),
        ("- just a list", ["the top level must be a mapping"]),
        ("models:\n  m: {engine: vllm\n", ["line 3", "YAML syntax error"]),
    ],
)
def test_bad_config_names_key_and_fix(text: str, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "conf/gateway.yaml")
    message = str(info.value)
    assert message.startswith("conf/gateway.yaml: invalid configuration")
    for fragment in expected:
        assert fragment in message


def test_resolve_checks_key_variables_and_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SB_TEST_KEY", raising=False)
    path = tmp_path / "gateway.yaml"
    path.write_text(
        """
models:
  a: {engine: litellm, model: openai/x, api_key_env: SB_TEST_KEY}
  b: {engine: vllm, launch: {model: ./weights}}
  c: {engine: vllm, launch: {model: "packaged:nope"}}
"""
    )
    with pytest.raises(ConfigError) as info:
        resolve(load_config(path), Settings(home=tmp_path / "home"))
    problems = info.value.problems
    assert any("models.a.api_key_env" in p and "export SB_TEST_KEY" in p for p in problems)
    assert any("models.b.launch.model" in p and str(tmp_path / "weights") in p for p in problems)
    assert any("models.c.launch.model" in p and "packaged:smollm2" in p for p in problems)

    monkeypatch.setenv("SB_TEST_KEY", "k")
    (tmp_path / "weights").mkdir()
    path.write_text("models:\n  b: {engine: vllm, launch: {model: ./weights}}\n")
    resolved = resolve(load_config(path), Settings(home=tmp_path / "home"))
    assert resolved.config.base_dir == tmp_path.resolve()


def test_config_check_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("models: {m: {engine: vllm, urls: ['http://127.0.0.1:8000']}}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: {m: {engine: vllm, url: ['http://127.0.0.1:8000']}}\n")
    runner = CliRunner()
    ok = runner.invoke(app, ["config", "check", str(good)])
    assert ok.exit_code == 0 and "OK" in ok.output
    failed = runner.invoke(app, ["config", "check", str(bad)])
    assert failed.exit_code == 2
    assert str(bad) in failed.output and "models.m.url: unknown key" in failed.output
    missing = runner.invoke(app, ["config", "check", str(tmp_path / "none.yaml")])
    assert missing.exit_code == 2 and "file not found" in missing.output
