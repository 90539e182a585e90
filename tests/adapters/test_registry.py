"""The adapter registry: names, manifests, what vLLM would refuse, folders, config checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.adapters.manifest import read_adapter
from gateway.adapters.registry import (
    AdapterRegistry,
    check_name,
    config_problems,
    lora_limits,
    registry_folders,
)
from gateway.config.loader import load_config, parse_config
from gateway.config.schema import GatewayConfig
from gateway.errors import AdapterNotFoundError, AdapterProblems, ConfigError, InvalidAdapterError
from gateway.resolve import resolve
from gateway.settings import Settings
from tests.support.adapter_fakes import make_adapter


def config_with(folder: Path | str, *, args: str = "[--enable-lora, --max-lora-rank=8]") -> str:
    return f"""
models:
  base:
    engine: vllm
    launch: {{model: packaged:smollm2-135m-instruct, args: {args}}}
  hosted: {{engine: litellm, model: openai/gpt-4o-mini}}
adapters:
  folders: ["{folder}"]
"""


def parsed(text: str) -> GatewayConfig:
    return parse_config(text, "test.yaml")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


@pytest.mark.parametrize("name", ["demo", "a", "medqa-demo", "v1.2_x", "0" * 64])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "../etc", "..", ".hidden", "/etc/passwd", "a/b", "Demo", "a b", "é", "x" * 65, "-a"],
)
def test_bad_names_are_400(name: str) -> None:
    with pytest.raises(InvalidAdapterError) as info:
        check_name(name)
    assert info.value.status_code == 400


def test_read_a_good_adapter(tmp_path: Path) -> None:
    folder = make_adapter(tmp_path, "demo")
    adapter = read_adapter(folder)
    assert adapter.name == "demo"
    assert adapter.manifest.rank == 8
    assert adapter.weights_dir == folder.resolve()


def test_weights_may_live_elsewhere(tmp_path: Path) -> None:
    weights = make_adapter(tmp_path / "store", "big")
    folder = tmp_path / "reg" / "big"
    folder.mkdir(parents=True)
    (folder / "adapter.yaml").write_text((weights / "adapter.yaml").read_text())
    with (folder / "adapter.yaml").open("a") as handle:
        handle.write(f"weights: {weights}\n")
    assert read_adapter(folder).weights_dir == weights.resolve()


@pytest.mark.parametrize(
    ("manifest", "peft", "problem"),
    [
        ({}, {"use_dora": True}, "use_dora: vLLM cannot serve DoRA"),
        ({}, {"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({}, {"bias": "all"}, "bias is 'all'; vLLM needs 'none'"),
        ({"rank": 4}, {}, "rank: 4 but"),
        ({"alpha": 8}, {}, "alpha: 8 but"),
        ({"name": "other"}, {}, "name: 'other' differs from its folder 'demo'"),
        ({"colour": "red"}, {}, "colour: unknown key. Fix: remove it"),
        ({"rank": 0}, {}, "rank: Input should be greater than or equal to 1"),
        ({"weights": "nowhere"}, {}, "adapter_config.json is missing. Fix: point 'weights'"),
    ],
)
def test_problems_name_the_file_key_and_fix(
    tmp_path: Path, manifest: dict[str, object], peft: dict[str, object], problem: str
) -> None:
    folder = make_adapter(tmp_path, "demo", manifest=manifest, peft=peft)
    with pytest.raises(AdapterProblems) as info:
        read_adapter(folder)
    text = str(info.value)
    assert problem in text
    assert str(folder) in text


def test_missing_weights_file(tmp_path: Path) -> None:
    folder = make_adapter(tmp_path, "demo")
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterProblems, match=r"no adapter_model\.safetensors"):
        read_adapter(folder)


def test_lora_limits_from_launch_args() -> None:
    config = parsed(config_with("/x", args="[--enable-lora, --max-lora-rank, '16', --max-loras=3]"))
    limits = lora_limits(config, "base")
    assert (limits.enabled, limits.max_rank, limits.max_loaded) == (True, 16, 3)
    config = parsed(config_with("/x", args="[--enable_lora, --max-loras=2, --max-cpu-loras=5]"))
    assert lora_limits(config, "base").max_loaded == 5
    # vLLM's defaults when the flags are absent: rank 16, one adapter, LoRA off
    limits = lora_limits(parsed(config_with("/x", args="[]")), "base")
    assert (limits.enabled, limits.max_rank, limits.max_loaded) == (False, 16, 1)
    assert not lora_limits(config, "hosted").enabled


def test_config_problems(tmp_path: Path) -> None:
    config = parsed(config_with(tmp_path))
    assert config_problems(read_adapter(make_adapter(tmp_path, "ok")), config) == []

    ghost = read_adapter(make_adapter(tmp_path, "ghost", base="nope"))
    assert "base_model: 'nope' is not a model of this config" in config_problems(ghost, config)[0]

    hosted = read_adapter(make_adapter(tmp_path, "hosted-one", base="hosted"))
    assert "hosted (litellm) model" in config_problems(hosted, config)[0]

    wide = read_adapter(make_adapter(tmp_path, "wide", manifest={"rank": 16}, peft={"r": 16}))
    (problem,) = config_problems(wide, config)
    assert "rank: 16 is above --max-lora-rank=8 (models.base.launch.args)" in problem
    assert "Fix:" in problem

    no_lora = parsed(config_with(tmp_path, args="[]"))
    assert "without --enable-lora" in config_problems(read_adapter(tmp_path / "ok"), no_lora)[0]

    clash = read_adapter(make_adapter(tmp_path, "base"))
    assert "also a model id" in config_problems(clash, config)[0]

    other_base = read_adapter(
        make_adapter(
            tmp_path,
            "trained-elsewhere",
            manifest={"training": _record("hub/Other-Model")},
        )
    )
    (problem,) = config_problems(other_base, config)
    assert "trained on 'hub/Other-Model' but models.base.launch.model" in problem


def _record(base_source: str) -> dict[str, object]:
    return {
        "command": "gateway adapters train ...",
        "base_source": base_source,
        "data": {"file": "d.jsonl", "sha256": "0" * 64, "rows": 3},
        "train_rows": 2,
        "val_rows": 1,
        "epochs": 1,
        "steps": 1,
        "batch_size": 2,
        "lr": 0.001,
        "seed": 0,
        "max_length": 64,
        "dropout": 0.0,
        "duration_s": 1.0,
        "device": "cpu",
    }


def test_scan_registers_valid_adapters_and_reports_the_rest(
    tmp_path: Path, settings: Settings
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    make_adapter(one, "good")
    make_adapter(one, "bad", peft={"use_dora": True})
    make_adapter(two, "good")  # the same name in a second folder
    (one / ".good.tmp-123").mkdir()  # training in progress: skipped
    (one / "README.md").write_text("not an adapter")
    config = parsed(config_with(one).replace(f'["{one}"]', f'["{one}", "{two}"]'))
    registry = AdapterRegistry(config, settings)
    problems = registry.scan()
    assert [a.name for a in registry.all()] == ["good"]
    assert any("use_dora" in p for p in problems)
    assert any("'good' is also registered by" in p for p in problems)
    assert len(problems) == 2


def test_symlink_escaping_the_folder_is_refused(tmp_path: Path, settings: Settings) -> None:
    outside = make_adapter(tmp_path / "outside", "sneaky")
    registry_dir = tmp_path / "reg"
    registry_dir.mkdir()
    (registry_dir / "sneaky").symlink_to(outside, target_is_directory=True)
    registry = AdapterRegistry(parsed(config_with(registry_dir)), settings)
    problems = registry.scan()
    assert "sneaky" not in registry
    assert "outside the registry folder" in problems[0]
    with pytest.raises(InvalidAdapterError, match="outside the registry folder"):
        registry.refresh("sneaky")


def test_refresh_registers_a_new_folder_and_refuses_paths(
    tmp_path: Path, settings: Settings
) -> None:
    registry = AdapterRegistry(parsed(config_with(tmp_path)), settings)
    assert registry.scan() == []
    make_adapter(tmp_path, "late")
    assert registry.refresh("late").name == "late"
    assert "late" in registry
    with pytest.raises(AdapterNotFoundError):
        registry.refresh("never")
    for name in ("../late", str(tmp_path / "late"), "late/..", ".."):
        with pytest.raises(InvalidAdapterError):
            registry.refresh(name)
    # a folder that disappears is dropped on refresh
    (tmp_path / "late" / "adapter.yaml").unlink()
    (tmp_path / "late" / "adapter_config.json").unlink()
    (tmp_path / "late" / "adapter_model.safetensors").unlink()
    (tmp_path / "late").rmdir()
    with pytest.raises(AdapterNotFoundError):
        registry.refresh("late")
    assert "late" not in registry


def test_folders_resolve_relative_to_the_file_and_home(tmp_path: Path, settings: Settings) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "adapters").mkdir()
    file = tmp_path / "conf" / "gateway.yaml"
    file.write_text(config_with("x").replace('["x"]', '["adapters", "$GATEWAY_HOME/adapters"]'))
    config = load_config(file)
    assert registry_folders(config, settings) == [
        (tmp_path / "conf" / "adapters").resolve(),
        (settings.home / "adapters").resolve(),
    ]


def test_config_check_names_the_manifest_key_and_fix(tmp_path: Path) -> None:
    reg = tmp_path / "adapters"
    make_adapter(reg, "wide", manifest={"rank": 16}, peft={"r": 16})
    file = tmp_path / "gateway.yaml"
    file.write_text(config_with("adapters") + "  preload: [missing]\n")
    with pytest.raises(ConfigError) as info:
        resolve(load_config(file), Settings(home=tmp_path / "home"))
    text = str(info.value)
    assert str(reg / "wide" / "adapter.yaml") in text and "rank: 16 is above" in text
    assert "adapters.preload: 'missing' is not in the registry folders. Fix:" in text


def test_a_missing_folder_is_an_error_unless_in_home(tmp_path: Path) -> None:
    file = tmp_path / "gateway.yaml"
    file.write_text(config_with("nowhere"))
    with pytest.raises(ConfigError, match=r"adapters.folders: .*nowhere does not exist"):
        resolve(load_config(file), Settings(home=tmp_path / "home"))
    file.write_text(config_with("$GATEWAY_HOME/adapters"))
    resolve(load_config(file), Settings(home=tmp_path / "home"))


def test_preload_beyond_max_loras_is_an_error(tmp_path: Path) -> None:
    reg = tmp_path / "adapters"
    for name in ("a", "b", "c"):
        make_adapter(reg, name)
    file = tmp_path / "gateway.yaml"
    args = "[--enable-lora, --max-lora-rank=8, --max-loras=2]"
    file.write_text(config_with("adapters", args=args) + "  preload: [a, b, c]\n")
    with pytest.raises(ConfigError, match=r"3 adapters on 'base', whose vLLM holds 2"):
        resolve(load_config(file), Settings(home=tmp_path / "home"))


def test_the_embedded_default_serves_the_demo_adapter(settings: Settings) -> None:
    config = load_config(None)
    registry = AdapterRegistry(config, settings)
    assert registry.scan() == []
    demo = registry.get("mmlu-med-demo")
    assert demo is not None and demo.base_model == "smollm2"
    assert "mmlu-med-demo" in config.adapters.preload
    assert demo.manifest.training is not None
    assert demo.manifest.training.command.startswith("gateway adapters train --base smollm2")


def test_cli_list_and_show(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gateway.cli.main import app

    make_adapter(tmp_path / "adapters", "shown")
    file = tmp_path / "gateway.yaml"
    file.write_text(config_with("adapters"))
    runner = CliRunner()
    listed = runner.invoke(app, ["adapters", "list", "--config", str(file)])
    assert listed.exit_code == 0 and "shown" in listed.output
    shown = runner.invoke(app, ["adapters", "show", "shown", "--config", str(file)])
    assert shown.exit_code == 0
    assert "base_model: base" in shown.output and "rank: 8" in shown.output
    for name, problem in (("../shown", "not a valid adapter name"), ("nope", "No adapter")):
        result = runner.invoke(app, ["adapters", "show", name, "--config", str(file)])
        assert result.exit_code == 1 and problem in result.output
