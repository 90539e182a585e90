"""LoRA training with peft: ``gateway adapters train``.

One base model from the config, one data file (``training_data.py``), loss on the trained
assistant tokens only, a validation split whose loss is measured before and after, a rich
progress bar, and an adapter folder with its manifest. The folder is built beside its final
place under a hidden name and renamed into place at the very end, so a failure (or Ctrl-C)
never leaves a half-written adapter that the registry would pick up.

torch, transformers and peft are imported inside the functions that need them: the gateway
itself never pays for them.
"""

from __future__ import annotations

import math
import os
import random
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from gateway.adapters.manifest import (
    AdapterManifest,
    DataFingerprint,
    TrainingRecord,
    write_adapter,
)
from gateway.adapters.registry import ADAPTER_NAME
from gateway.adapters.training_data import (
    IGNORE,
    Encoded,
    TrainingData,
    encode,
    micro_batches,
    read_training_data,
    split_validation,
)
from gateway.config.schema import (
    PACKAGED_PREFIX,
    GatewayConfig,
    LiteLLMModel,
    VLLMModel,
    model_path,
)
from gateway.errors import TrainingError
from gateway.learned import ADAPTER_FILE, Learned, write_learned
from gateway.settings import Settings

#: every projection of a Llama-style block; vLLM serves LoRA on all of them
DEFAULT_TARGET_MODULES = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


@dataclass(frozen=True)
class TrainOptions:
    base: str
    data: Path
    out: Path
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    epochs: float = 1.0
    lr: float = 2e-4
    max_steps: int | None = None
    batch_size: int = 8
    seed: int = 0
    val_fraction: float = 0.1
    max_length: int = 2048
    #: padded tokens per forward pass; bounds memory (about 2.5 MB a token for SmolLM2-135M)
    tokens_per_pass: int = 1024
    target_modules: Sequence[str] = DEFAULT_TARGET_MODULES
    description: str = ""
    force: bool = False
    #: the --config the base model comes from (None: the embedded default)
    config: str | None = None
    #: CPU threads (None: all cores but one, see ``cpu_threads``)
    threads: int | None = None

    def command(self) -> str:
        """The command line that trains this adapter again, every setting spelt out."""
        args = ["gateway", "adapters", "train", "--base", self.base, "--data", str(self.data)]
        args += ["--out", str(self.out), "--rank", str(self.rank), "--alpha", str(self.alpha)]
        if self.max_steps is not None:
            args += ["--max-steps", str(self.max_steps)]
        else:
            args += ["--epochs", f"{self.epochs:g}"]
        args += ["--lr", f"{self.lr:g}", "--batch-size", str(self.batch_size)]
        args += ["--seed", str(self.seed), "--val-fraction", f"{self.val_fraction:g}"]
        args += ["--max-length", str(self.max_length)]
        if self.description:
            args += ["--description", self.description]
        if self.config:
            args += ["--config", self.config]
        if self.threads:
            args += ["--threads", str(self.threads)]
        return shlex.join(args)


def cpu_threads(requested: int | None) -> int:
    """Threads for training on the CPU: all cores but one unless told.

    vLLM's CPU worker keeps its cores busy even when idle, and a thread of ours that shares a
    core with it stalls the others at every barrier: on 2 cores beside a running vLLM, two
    threads trained ten times slower than one.
    """
    return requested or max(1, len(os.sched_getaffinity(0)) - 1)


@dataclass(frozen=True)
class BaseWeights:
    model_id: str
    #: what from_pretrained loads: a local folder or a model hub id
    load_from: str
    #: what the config serves, recorded so the registry can check the adapter matches its base
    source: str


@dataclass
class TrainResult:
    out: Path
    manifest: AdapterManifest
    history: list[float] = field(default_factory=list)


# -- preparation (fast, before any model is loaded) -------------------------------------------


def resolve_base(config: GatewayConfig, model_id: str, settings: Settings) -> BaseWeights:
    """The weights a config's model serves: the prepared packaged folder, a folder, a hub id."""
    spec = config.models.get(model_id)
    if spec is None:
        raise TrainingError(
            f"--base '{model_id}' is not a model of the config ({', '.join(config.models)}). "
            "Fix: pass one of them, or --config a file that has it."
        )
    if isinstance(spec, LiteLLMModel):
        raise TrainingError(
            f"--base '{model_id}' is a hosted model; adapters are trained for vLLM models."
        )
    assert isinstance(spec, VLLMModel)
    if spec.launch is None:
        hub_id = spec.upstream_model or model_id
        return BaseWeights(model_id, hub_id, hub_id)
    source = spec.launch.model
    if source.startswith(PACKAGED_PREFIX):
        from gateway.engines.packaged import prepare_model

        folder = prepare_model(settings.models_dir, source.removeprefix(PACKAGED_PREFIX))
        return BaseWeights(model_id, str(folder), source)
    if source.startswith(("/", "./", "../", "~")):
        return BaseWeights(model_id, str(model_path(source, config.base_dir)), source)
    return BaseWeights(model_id, source, source)


def check_options(options: TrainOptions) -> None:
    name = options.out.name
    if not ADAPTER_NAME.fullmatch(name):
        raise TrainingError(
            f"--out: the folder name '{name}' is the adapter's name and must match "
            f"{ADAPTER_NAME.pattern}. Fix: e.g. --out adapters/my-adapter"
        )
    if options.out.exists() and not options.force:
        raise TrainingError(f"--out: {options.out} exists. Fix: pick another name, or --force.")
    problems = [
        ("--rank", options.rank >= 1),
        ("--alpha", options.alpha > 0),
        ("--epochs", options.epochs > 0),
        ("--lr", options.lr > 0),
        ("--max-steps", options.max_steps is None or options.max_steps >= 1),
        ("--batch-size", options.batch_size >= 1),
        ("--val-fraction", 0 <= options.val_fraction < 1),
        ("--max-length", options.max_length >= 16),
        ("--dropout", 0 <= options.dropout < 1),
        ("--threads", options.threads is None or options.threads >= 1),
    ]
    for flag, ok in problems:
        if not ok:
            raise TrainingError(f"{flag} is out of range (see `gateway adapters train --help`)")


# -- training --------------------------------------------------------------------------------


class _Trainer:
    """The model under training and the passes over it (torch objects typed as Any)."""

    def __init__(self, model: Any, torch: Any, device: str, pad_id: int, budget: int) -> None:
        self.model = model
        self.torch = torch
        self.device = device
        self.pad_id = pad_id
        self.budget = budget

    def collate(self, rows: Sequence[Encoded]) -> dict[str, Any]:
        width = max(len(r.input_ids) for r in rows)
        pads = [width - len(r.input_ids) for r in rows]
        pairs = list(zip(rows, pads, strict=True))
        tensor = self.torch.tensor
        return {
            "input_ids": tensor([r.input_ids + [self.pad_id] * p for r, p in pairs]),
            "attention_mask": tensor([[1] * len(r.input_ids) + [0] * p for r, p in pairs]),
            "labels": tensor([r.labels + [IGNORE] * p for r, p in pairs]),
        }

    def _passes(self, rows: Sequence[Encoded]) -> list[tuple[dict[str, Any], int]]:
        return [
            ({k: v.to(self.device) for k, v in self.collate(group).items()}, _targets(group))
            for group in micro_batches(rows, self.budget)
        ]

    def train_step(self, rows: Sequence[Encoded]) -> float:
        """Forward and backward over one step's examples; the loss per target token."""
        passes = self._passes(rows)
        total = sum(count for _, count in passes)
        step_loss = 0.0
        for batch, count in passes:
            # The model averages over its pass's target tokens; weighting by the pass's share
            # makes the step's loss the average over all its target tokens.
            loss = self.model(**batch).loss * (count / total)
            loss.backward()
            step_loss += float(loss.detach())
        return step_loss

    def validation_loss(self, rows: Sequence[Encoded]) -> float | None:
        if not rows:
            return None
        self.model.eval()
        total, tokens = 0.0, 0
        with self.torch.no_grad():
            for start in range(0, len(rows), 64):
                for batch, count in self._passes(rows[start : start + 64]):
                    total += float(self.model(**batch).loss) * count
                    tokens += count
        self.model.train()
        return total / max(tokens, 1)


def _targets(rows: Sequence[Encoded]) -> int:
    """Target tokens of some examples (transformers shifts labels by one)."""
    return sum(sum(1 for label in r.labels[1:] if label != IGNORE) for r in rows)


def train(
    options: TrainOptions, config: GatewayConfig, settings: Settings, console: Console
) -> TrainResult:
    """Train, then write the adapter folder and its manifest; raise ``TrainingError``."""
    started = time.monotonic()
    check_options(options)
    data = read_training_data(options.data)
    base = resolve_base(config, options.base, settings)
    if data.dropped_heldout:
        console.print(
            f"{options.data}: {len(data.conversations)} train-split items used, "
            f"{data.dropped_heldout} held-out items left out"
        )

    import peft
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_logging: Any = transformers.utils.logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(options.seed)
    tokenizer = AutoTokenizer.from_pretrained(base.load_from)
    items = [encode(c, tokenizer, options.max_length) for c in data.conversations]
    train_items, val_items = split_validation(items, options.val_fraction, options.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(cpu_threads(options.threads))
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else None
    base_model: Any = AutoModelForCausalLM.from_pretrained(
        base.load_from, dtype=dtype or torch.float32
    )
    lora = peft.LoraConfig(
        r=options.rank,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=list(options.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model: Any = peft.get_peft_model(base_model.to(device), lora)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    trainer = _Trainer(model, torch, device, pad_id, options.tokens_per_pass)

    per_epoch = math.ceil(len(train_items) / options.batch_size)
    steps = options.max_steps or max(1, math.ceil(options.epochs * per_epoch))
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=options.lr, weight_decay=0.0
    )
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min((step + 1) / warmup, max(0.0, (steps - step) / max(1, steps - warmup))),
    )
    console.print(
        f"training {options.out.name} on {base.model_id} ({base.source}): {len(train_items)} "
        f"train / {len(val_items)} validation examples, {steps} steps of {options.batch_size}, "
        f"rank {options.rank}, device {device}"
        + (f" ({torch.get_num_threads()} threads)" if device == "cpu" else "")
    )
    val_before = trainer.validation_loss(val_items)
    history: list[float] = []
    shuffle = random.Random(options.seed)
    order: list[int] = []
    model.train()
    with Progress(*_COLUMNS, console=console) as progress:
        task = progress.add_task("training", total=steps, loss="-")
        for _ in range(steps):
            if len(order) < options.batch_size:
                # A new epoch: the examples of the last partial batch start it.
                fresh = list(range(len(train_items)))
                shuffle.shuffle(fresh)
                order += fresh
            batch, order = order[: options.batch_size], order[options.batch_size :]
            history.append(trainer.train_step([train_items[i] for i in batch]))
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            recent = history[-10:]
            loss = f"{sum(recent) / len(recent):.4f}"
            progress.update(task, advance=1, loss=loss)
            done = len(history)
            if not console.is_terminal and (done % max(1, steps // 10) == 0 or done == steps):
                # A log file gets no live bar (rich draws it once at the end): a line per 10%.
                console.print(f"step {done}/{steps} loss {loss}", highlight=False)
    val_after = trainer.validation_loss(val_items)
    if val_before is not None and val_after is not None:
        console.print(f"validation loss: {val_before:.4f} before, {val_after:.4f} after")

    record = TrainingRecord(
        command=options.command(),
        base_source=base.source,
        data=DataFingerprint(
            file=str(options.data), sha256=data.sha256, rows=len(items), format=data.format
        ),
        train_rows=len(train_items),
        val_rows=len(val_items),
        epochs=round(steps * options.batch_size / len(train_items), 3),
        steps=steps,
        batch_size=options.batch_size,
        lr=options.lr,
        seed=options.seed,
        max_length=options.max_length,
        dropout=options.dropout,
        train_loss=_mean(history[-10:]),
        val_loss_before=_round(val_before),
        val_loss_after=_round(val_after),
        duration_s=round(time.monotonic() - started, 1),
        device=device,
        versions={
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
    )
    manifest = AdapterManifest(
        name=options.out.name,
        base_model=base.model_id,
        description=options.description or _describe(data, options),
        rank=options.rank,
        alpha=options.alpha,
        target_modules=sorted(options.target_modules),
        created=datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        training=record,
    )
    # What the adapter learned from (its training rows, not the validation ones), so that an
    # evaluation leaves out exactly those items and nothing else (gateway/learned.py).
    trained_on = {row.where for row in train_items}
    learned = Learned(
        "adapter",
        options.out.name,
        frozenset(i for c in data.conversations if c.where in trained_on for i in c.content_ids),
        str(options.data),
    )

    def save(folder: str) -> None:
        model.save_pretrained(folder)
        write_learned(Path(folder) / ADAPTER_FILE, learned)

    write_adapter(options.out, manifest, save, force=options.force)
    return TrainResult(options.out, manifest, history)


_COLUMNS = (
    TextColumn("[bold]{task.description}"),
    BarColumn(),
    MofNCompleteColumn(),
    TextColumn("loss {task.fields[loss]}"),
    TimeElapsedColumn(),
    TimeRemainingColumn(),
)


def _describe(data: TrainingData, options: TrainOptions) -> str:
    kind = "labelled multiple-choice items" if data.format == "mc" else "chat examples"
    return f"LoRA trained on {len(data.conversations)} {kind} from {options.data.name}."


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _round(value: float | None) -> float | None:
    return round(value, 4) if value is not None else None
