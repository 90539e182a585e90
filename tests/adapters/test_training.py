"""Training data and the training helpers: line-precise errors, the held-out split, masking,
memory-bounded passes, atomic output. The full training run is in the integration layer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gateway.adapters.manifest import AdapterManifest, write_adapter
from gateway.adapters.training import TrainOptions, check_options, cpu_threads, resolve_base
from gateway.adapters.training_data import (
    IGNORE,
    Conversation,
    Encoded,
    encode,
    mc_prompt,
    micro_batches,
    parse_conversation,
    read_training_data,
    split_validation,
)
from gateway.cli.main import app
from gateway.config.loader import load_config
from gateway.datasets import MCItem, split_of, write_items
from gateway.errors import TrainingDataError, TrainingError
from gateway.settings import Settings

GOOD = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
}


def write_lines(path: Path, rows: list[Any]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ("{not json", "not valid JSON"),
        ([1, 2], 'expected an object with "messages"'),
        ({"messages": []}, "'messages' must be a non-empty list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, 'role is "robot"; use one of'),
        ({"messages": [{"role": "user", "content": ""}]}, "'content' must be a non-empty string"),
        ({"messages": [{"role": "user", "content": ["a"]}]}, "'content' must be a non-empty"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant message to learn"),
        (
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a", "weight": 0},
                ]
            },
            "no assistant message to learn",
        ),
        (
            {"messages": [{"role": "user", "content": "q", "weight": 1}]},
            "'weight' is only allowed on assistant messages",
        ),
        (
            {"messages": [{"role": "assistant", "content": "a", "weight": 0.5}]},
            "'weight' must be 0 or 1",
        ),
        ({"messages": [{"role": "assistant", "content": "a", "tool": 1}]}, "unknown keys tool"),
        ({**GOOD, "tools": []}, "unsupported keys tools"),
    ],
)
def test_bad_chat_lines_name_the_line(tmp_path: Path, row: Any, problem: str) -> None:
    path = write_lines(tmp_path / "d.jsonl", [GOOD, "", row])
    with pytest.raises(TrainingDataError) as info:
        read_training_data(path)
    assert str(info.value).startswith(f"{path}:3: ")
    assert problem in str(info.value)


def test_empty_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(TrainingDataError, match="no examples"):
        read_training_data(write_lines(tmp_path / "e.jsonl", [""]))
    with pytest.raises(TrainingDataError, match="cannot read"):
        read_training_data(tmp_path / "missing.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TrainingDataError, match="not UTF-8"):
        read_training_data(tmp_path / "bin.jsonl")


def test_weights_and_fingerprint(tmp_path: Path) -> None:
    row = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b", "weight": 0},
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d"},
        ]
    }
    path = write_lines(tmp_path / "d.jsonl", [row, GOOD])
    data = read_training_data(path)
    assert data.format == "chat"
    assert [c.trained for c in data.conversations] == [
        (False, False, False, True),
        (False, False, True),
    ]
    import hashlib

    assert data.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def mc_items(count: int) -> list[MCItem]:
    return [
        MCItem(f"item-{i}", f"Question {i}?", {"A": "yes", "B": "no"}, "AB"[i % 2])
        for i in range(count)
    ]


def test_mc_data_trains_on_the_train_split_only(tmp_path: Path) -> None:
    items = mc_items(40)
    path = tmp_path / "mc.jsonl"
    write_items(items, path)
    data = read_training_data(path)
    heldout = [i for i in items if split_of(i.id) == "heldout"]
    assert data.format == "mc"
    assert data.dropped_heldout == len(heldout) > 0
    assert len(data.conversations) == len(items) - len(heldout)
    trained_questions = {c.messages[0][1] for c in data.conversations}
    for item in heldout:
        assert mc_prompt(item.question, item.options) not in trained_questions
    first = next(i for i in items if split_of(i.id) == "train")
    prompt = f"{first.question}\n\nA. yes\nB. no\n\nAnswer with the letter of the correct option."
    assert data.conversations[0].messages == (
        ("user", prompt),
        ("assistant", f"Answer: {first.answer}"),
    )
    assert data.conversations[0].trained == (False, True)


def test_mc_data_errors_keep_their_line(tmp_path: Path) -> None:
    path = tmp_path / "mc.jsonl"
    write_items(mc_items(3), path)
    with path.open("a") as handle:
        handle.write(json.dumps({"id": "x", "question": "q", "options": {"A": "a"}, "answer": "A"}))
    with pytest.raises(TrainingDataError, match=r"mc\.jsonl:4: 'options' must map at least two"):
        read_training_data(path)


def test_all_heldout_is_refused(tmp_path: Path) -> None:
    heldout = [i for i in mc_items(40) if split_of(i.id) == "heldout"]
    path = tmp_path / "mc.jsonl"
    write_items(heldout, path)
    with pytest.raises(TrainingDataError, match="held-out split; adapters never train on them"):
        read_training_data(path)


# -- helpers of the training loop ---------------------------------------------------------------


def rows(*lengths: int) -> list[Encoded]:
    return [Encoded([1] * n, [IGNORE] + [1] * (n - 1), f"l{i}") for i, n in enumerate(lengths)]


def test_micro_batches_bound_padded_tokens() -> None:
    groups = micro_batches(rows(100, 300, 50, 250, 60, 1200), token_budget=600)
    assert [[len(r.input_ids) for r in g] for g in groups] == [[1200], [300, 250], [100, 60, 50]]
    for group in groups[1:]:
        assert len(group) * max(len(r.input_ids) for r in group) <= 600
    assert sorted(r.where for g in groups for r in g) == [f"l{i}" for i in range(6)]


def test_validation_split_is_seeded_and_never_empty() -> None:
    items = rows(*range(10, 30))
    train, val = split_validation(items, 0.2, seed=1)
    assert len(val) == 4 and len(train) == 16
    assert {r.where for r in train}.isdisjoint({r.where for r in val})
    assert split_validation(items, 0.2, seed=1) == (train, val)
    assert split_validation(items, 0.2, seed=2) != (train, val)
    assert len(split_validation(rows(10, 11), 0.01, seed=0)[1]) == 1
    assert split_validation(rows(10, 11), 0.0, seed=0)[1] == []
    assert split_validation(rows(10), 0.5, seed=0) == (rows(10), [])


def test_check_options(tmp_path: Path) -> None:
    def opts(**kw: Any) -> TrainOptions:
        return TrainOptions(base="smollm2", data=tmp_path / "d.jsonl", **kw)

    check_options(opts(out=tmp_path / "good-name"))
    with pytest.raises(TrainingError, match="'Bad Name' is the adapter's name and must match"):
        check_options(opts(out=tmp_path / "Bad Name"))
    (tmp_path / "taken").mkdir()
    with pytest.raises(TrainingError, match=r"exists\. Fix: pick another name, or --force"):
        check_options(opts(out=tmp_path / "taken"))
    check_options(opts(out=tmp_path / "taken", force=True))
    with pytest.raises(TrainingError, match="--val-fraction is out of range"):
        check_options(opts(out=tmp_path / "x", val_fraction=1.0))


def test_command_spells_out_every_setting(tmp_path: Path) -> None:
    options = TrainOptions(
        base="smollm2", data=Path("d.jsonl"), out=Path("adapters/x"), max_steps=5, lr=1e-3
    )
    assert options.command() == (
        "gateway adapters train --base smollm2 --data d.jsonl --out adapters/x --rank 8 "
        "--alpha 16 --max-steps 5 --lr 0.001 --batch-size 8 --seed 0 --val-fraction 0.1 "
        "--max-length 2048"
    )


def test_cpu_threads_leave_a_core_for_vllm() -> None:
    import os

    assert cpu_threads(3) == 3
    assert cpu_threads(None) == max(1, len(os.sched_getaffinity(0)) - 1)


def test_resolve_base_names_the_fix(tmp_path: Path) -> None:
    config = load_config(None)
    with pytest.raises(TrainingError, match=r"--base 'nope' is not a model of the config"):
        resolve_base(config, "nope", Settings(home=tmp_path))


def test_a_failed_save_leaves_nothing_behind(tmp_path: Path) -> None:
    manifest = AdapterManifest(
        name="x", base_model="b", rank=8, alpha=16, target_modules=["q_proj"], created="now"
    )

    def broken_save(folder: str) -> None:
        (Path(folder) / "adapter_model.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_adapter(tmp_path / "x", manifest, broken_save, force=False)
    assert list(tmp_path.iterdir()) == []


# -- masking with the real tokenizer of the packaged model -------------------------------------


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    from gateway.engines.packaged import prepare_model

    return AutoTokenizer.from_pretrained(
        prepare_model(Settings().models_dir, "smollm2-135m-instruct")
    )


def test_loss_covers_trained_assistant_turns_only(tokenizer: Any) -> None:
    conversation = parse_conversation(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "First question?"},
                    {"role": "assistant", "content": "Skipped reply.", "weight": 0},
                    {"role": "user", "content": "Second question?"},
                    {"role": "assistant", "content": "Answer: C"},
                ]
            }
        ),
        "d.jsonl:1",
    )
    encoded = encode(conversation, tokenizer, max_length=512)
    trained = [
        t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE
    ]
    assert tokenizer.decode(trained) == "Answer: C<|im_end|>\n"


def test_an_example_cut_before_its_answer_is_an_error(tokenizer: Any) -> None:
    conversation = Conversation(
        (("user", "word " * 300), ("assistant", "Answer: A")), (False, True), "d.jsonl:7"
    )
    with pytest.raises(
        TrainingDataError, match=r"d\.jsonl:7: no assistant tokens within --max-length 64"
    ):
        encode(conversation, tokenizer, max_length=64)


# -- the command line ---------------------------------------------------------------------------


def test_cli_bad_data_exits_2_naming_the_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", [GOOD, {"messages": [{"role": "user"}]}])
    result = CliRunner().invoke(
        app,
        [
            "adapters",
            "train",
            "--base",
            "smollm2",
            "--data",
            str(path),
            "--out",
            str(tmp_path / "a"),
        ],
    )
    assert result.exit_code == 2
    assert "d.jsonl:2: messages[0]: 'content' must be a non-empty string" in " ".join(
        result.output.split()
    )
    assert not (tmp_path / "a").exists()


def test_write_adapter_renames_into_place_and_scrubs_local_paths(tmp_path: Path) -> None:
    from gateway.adapters.manifest import read_adapter

    manifest = AdapterManifest(
        name="x", base_model="b", rank=8, alpha=16, target_modules=["q_proj"], created="now"
    )

    def save(folder: str) -> None:
        config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "bias": "none"}
        config["base_model_name_or_path"] = "/home/someone/models/base"
        (Path(folder) / "adapter_config.json").write_text(json.dumps(config))
        (Path(folder) / "adapter_model.safetensors").write_bytes(b"weights")
        (Path(folder) / "README.md").write_text("base_model: /home/someone/models/base")

    out = tmp_path / "x"
    write_adapter(out, manifest, save, force=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter.yaml",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert "/home/someone" not in (out / "adapter_config.json").read_text()
    assert read_adapter(out).manifest == manifest
    with pytest.raises(FileExistsError):
        write_adapter(out, manifest, save, force=False)
    write_adapter(out, manifest.model_copy(update={"description": "new"}), save, force=True)
    assert read_adapter(out).manifest.description == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]
