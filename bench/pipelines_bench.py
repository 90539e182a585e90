"""Wall time of a 5-way choice-shuffle ensemble against one call, on the same vLLM.

Both arms are the shipped medprompt pipeline run in process by ``PipelineRunner`` against one
vLLM (``--url``): the same retrieved few-shot prompt, once with its 5-member ensemble and once
with the ensemble cut to one member. Every member generates exactly ``--tokens`` tokens
(vLLM's ``ignore_eos``) and the letter fallback is off, so the arms differ only in the number
of concurrent members. Questions are held-out items asked one at a time, the arms taking turns
on different questions (a question asked twice would find its prompt in vLLM's prefix cache
the second time and flatter whichever arm came second).

    python bench/pipelines_bench.py --url http://127.0.0.1:8000 --model smollm2 \\
        --data heldout.jsonl --questions 10 --tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import replace
from pathlib import Path

from gateway.config.loader import parse_config
from gateway.datasets import read_items
from gateway.engines.target import base_target
from gateway.engines.vllm import VLLMEngine
from gateway.pipelines.loader import Pipeline, load_pipelines
from gateway.pipelines.runner import PipelineRunner
from gateway.protocol import ChatCompletionRequest


def variant(pipeline: Pipeline, name: str, k: int) -> Pipeline:
    spec = pipeline.spec.model_copy(
        update={
            "ensemble": pipeline.spec.ensemble.model_copy(update={"k": k}),
            "generate": pipeline.spec.generate.model_copy(update={"fallback": "none"}),
        }
    )
    return replace(pipeline, name=name, spec=spec)


async def run(args: argparse.Namespace) -> None:
    config = parse_config("models: {m: {engine: vllm, urls: ['http://127.0.0.1:9']}}", "bench")
    medprompt = load_pipelines(config)["medprompt"]
    arms = {"one call": variant(medprompt, "k1", 1), "5-way ensemble": variant(medprompt, "k5", 5)}
    runner = PipelineRunner({p.name: p for p in arms.values()})
    runner.warm_up()
    engine = VLLMEngine(model_id=args.model, upstream_model=args.model, urls=[args.url])
    await engine.start()
    target = base_target(args.model, engine)
    items = read_items(args.data, split="heldout")[: 2 * args.questions + 1]
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    tokens: dict[str, list[int]] = {arm: [] for arm in arms}
    try:
        for number, item in enumerate(items):
            body = {
                "model": args.model,
                "messages": [{"role": "user", "content": "see the extension"}],
                "max_tokens": args.tokens,
                "ignore_eos": True,
                "switchboard": {"question": item.question, "options": item.options},
            }
            chat = ChatCompletionRequest.model_validate(body)
            arm = list(arms)[number % 2]
            started = time.perf_counter()
            result = await runner.complete(arms[arm].name, target, body, chat)
            elapsed = time.perf_counter() - started
            if number == 0:
                continue  # the first question warms the embedder and vLLM
            times[arm].append(elapsed)
            tokens[arm].append(result.usage["completion_tokens"])
    finally:
        await engine.stop()
    print(f"{args.questions} held-out questions per arm, {args.tokens} generated tokens a member\n")
    print("| arm | calls | median s | p90 s | completion tokens per request |")
    print("|---|---:|---:|---:|---:|")
    for arm, values in times.items():
        values.sort()
        p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
        calls = arms[arm].spec.ensemble.k
        print(
            f"| {arm} | {calls} | {statistics.median(values):.2f} | {p90:.2f} | "
            f"{statistics.mean(tokens[arm]):.0f} |"
        )
    ratio = statistics.median(times["5-way ensemble"]) / statistics.median(times["one call"])
    print(f"\n5-way / one call (medians): {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="a vLLM server (http://host:port)")
    parser.add_argument("--model", default="smollm2", help="the name vLLM serves")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--questions", type=int, default=10, help="per arm")
    parser.add_argument("--tokens", type=int, default=64)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
