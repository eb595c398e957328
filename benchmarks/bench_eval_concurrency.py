"""The eval stage's generation path, concurrency 16 vs 1, behind a sampler with 200 ms per request; run by hand.

    python benchmarks/bench_eval_concurrency.py [--examples 256] [--latency 0.2] [--max-new-tokens 8] [--repeats 3] [--model tiny|demo] [--out artifacts/bench]
    python benchmarks/bench_eval_concurrency.py --tiny    # 32 examples, 50 ms, 4 new tokens, 1 repeat (seconds)

The real path of `loraexp eval`: `build_examples` (demo contract, demo tokenizer and chat template, ~62-token
prompts) -> `generate_all` (asyncio, semaphore of `concurrency`, `prediction_row` = decode + strict + lenient /
math-verify scoring, one JSONL row written per example). The sampler is the local client's, wrapped in
`FaultyClient(sampler, latency_s=0.2)` so every request pays 200 ms after its compute. Model: `tiny` (default) is
a random Qwen3 of hidden 64, 2 layers on the demo tokenizer's vocabulary, so that the sampler's compute stays small
beside the latency as the target assumes; `demo` is the demo base (hidden 128, 4 layers; built once under
the cache, ~2 min on a first run), whose batch-of-16 prefill alone is ~50-100 ms on this CPU. torch runs one
intra-op thread (`--threads`): with 2 threads on 2 busy cores a 16-row decode took 1-5 s instead of 0.1 s.
Concurrency 1 and 16 alternate per repeat; medians. Target: concurrency 16 >= 14x faster than sequential on 256 examples.
Everything (the demo tokenizer, the models, predictions) is written under `--out`; the cache (demo tokenizer and demo
base) is <out>/eval_concurrency/cache unless `--cache` names another, e.g. artifacts/cache where `loraexp demo` keeps them.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import tinker
import torch

from benchkit import DEMO_CONFIG, add_common_args, emit, out_dir
from loraexp.chat import stop_token_id
from loraexp.contracts import load_contract
from loraexp.demo.base_model import DemoBaseRecipe, new_model
from loraexp.demo.data import generate_benchmark_rows
from loraexp.files import JsonlWriter, read_jsonl
from loraexp.local_tinker import LocalServiceClient
from loraexp.scoring.answers import gsm8k_reference
from loraexp.service import base_model_resolver
from loraexp.service.retry import Retry
from loraexp.stages.eval import build_examples, generate_all, prediction_row
from loraexp.testing.faults import FaultyClient
from loraexp.tokenization import load_tokenizer


def tiny_model_dir(directory: Path, tokenizer) -> Path:
    """A random Qwen3 (hidden 64, 2 layers, 4x16 heads, MLP 128) on the demo tokenizer's vocabulary, saved with it."""
    recipe = DemoBaseRecipe(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)
    new_model(recipe, tokenizer).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def time_generation(sampler, examples: list[dict], params: tinker.SamplingParams, tokenizer, concurrency: int, workdir: Path) -> float:
    """Wall seconds of one `generate_all` pass over `examples`; checks one row per example was written."""
    path = workdir / f"predictions-c{concurrency}-{time.monotonic_ns()}.jsonl"
    started = time.perf_counter()
    with JsonlWriter(path) as writer:
        asyncio.run(generate_all(sampler, examples, params, tokenizer, writer, concurrency, f"c{concurrency}", progress=False, retry=Retry()))
    seconds = time.perf_counter() - started
    assert len(read_jsonl(path)) == len(examples)
    return seconds


def benchmark_rows(count: int) -> list[dict]:
    """The demo benchmark generator's GSM8K-shaped questions, with the reference answer `load_benchmark` reads (after ####)."""
    return [{"index": index, "question": row["question"], "answer": row["answer"], "reference": gsm8k_reference(row["answer"])}
            for index, row in enumerate(generate_benchmark_rows(count, seed=0))]


def scoring_ms_per_row(sampler, examples: list[dict], params: tinker.SamplingParams, tokenizer) -> float:
    """Synchronous work per finished example (decode + strict + lenient scoring), in ms."""
    sequences = [sampler.sample(tinker.ModelInput.from_ints(ex["prompt"]), 1, params).result().sequences[0] for ex in examples]
    started = time.perf_counter()
    for example, sequence in zip(examples, sequences):
        prediction_row(example, sequence, tokenizer)
    return (time.perf_counter() - started) / len(examples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--examples", type=int, default=None, help="default 256; 32 with --tiny")
    parser.add_argument("--latency", type=float, default=None, help="seconds added to every sample request (default 0.2; 0.05 with --tiny)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 8; 4 with --tiny")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=None, help="default 3; 1 with --tiny")
    parser.add_argument("--model", choices=("tiny", "demo"), default="tiny")
    parser.add_argument("--cache", type=Path, default=None, help="tokenizer and demo-base cache (default <out>/eval_concurrency/cache)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    defaults = {"examples": (256, 32), "latency": (0.2, 0.05), "max_new_tokens": (8, 4), "repeats": (3, 1)}
    for name, (full, tiny) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, tiny if args.tiny else full)
    torch.set_num_threads(args.threads)
    out = out_dir(args, "eval_concurrency")
    cache = (args.cache or out / "cache").expanduser().resolve()
    contract = load_contract(DEMO_CONFIG)
    tokenizer = load_tokenizer(contract.render.tokenizer, cache)
    examples = build_examples(contract, tokenizer, benchmark_rows(args.examples), args.examples)
    params = tinker.SamplingParams(max_tokens=args.max_new_tokens, temperature=0.0, stop=[stop_token_id(tokenizer)])
    tmp = Path(tempfile.mkdtemp(dir=out, prefix="run-"))
    try:
        service = LocalServiceClient(tmp / "local_tinker", resolve_model=base_model_resolver(cache))
        base_model = str(tiny_model_dir(tmp / "tiny", tokenizer)) if args.model == "tiny" else contract.experiment.base_model
        local = service.create_sampling_client(base_model=base_model).result()
        sampler = FaultyClient(local, latency_s=args.latency)
        scoring_ms = scoring_ms_per_row(local, examples[:64], params, tokenizer)
        no_latency = {c: time_generation(local, examples, params, tokenizer, c, tmp) for c in (1, args.concurrency)}
        sequential_s, concurrent_s = [], []
        for repeat in range(args.repeats):
            sequential_s.append(time_generation(sampler, examples, params, tokenizer, 1, tmp))
            concurrent_s.append(time_generation(sampler, examples, params, tokenizer, args.concurrency, tmp))
            print(f"repeat {repeat}: concurrency 1 {sequential_s[-1]:.2f} s, concurrency {args.concurrency} {concurrent_s[-1]:.2f} s, "
                  f"{sequential_s[-1] / concurrent_s[-1]:.1f}x", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ideal = args.examples * args.latency / args.concurrency
    print(f"model {args.model}, torch threads {torch.get_num_threads()}, {args.examples} examples, {args.max_new_tokens} new tokens max, {args.latency * 1000:.0f} ms per request; "
          f"scoring {scoring_ms:.2f} ms/row; without latency: c1 {no_latency[1]:.2f} s, c{args.concurrency} {no_latency[args.concurrency]:.2f} s")
    print(f"  concurrency 1   {statistics.median(sequential_s):.2f} s (median; latency alone {args.examples * args.latency:.1f} s)")
    print(f"  concurrency {args.concurrency}  {statistics.median(concurrent_s):.2f} s (median; latency alone {ideal:.1f} s)")
    ratios = [s / c for s, c in zip(sequential_s, concurrent_s)]
    print(f"  speedup {statistics.median(ratios):.1f}x median (repeats {', '.join(f'{r:.1f}' for r in ratios)}; target >= 14)")
    emit("eval_concurrency", {"model": args.model, "threads": torch.get_num_threads(), "examples": args.examples, "latency_s": args.latency,
                              "max_new_tokens": args.max_new_tokens, "concurrency": args.concurrency, "scoring_ms_per_row": scoring_ms,
                              "no_latency_s": {str(c): seconds for c, seconds in no_latency.items()},
                              "sequential_s": statistics.median(sequential_s), "concurrent_s": statistics.median(concurrent_s),
                              "speedup": statistics.median(ratios), "speedups": ratios, "latency_only_speedup": args.concurrency,
                              "target": "speedup >= 14 at 256 examples, 0.2 s"})


if __name__ == "__main__":
    main()
