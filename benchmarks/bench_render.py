"""Render 28k real rows with the Qwen3 vocabulary (qwen3-offline) and time the stage; run by hand.

    python benchmarks/bench_render.py [--rows 28000] [--out artifacts/bench]     # reads ../shared/data
    python benchmarks/bench_render.py --tiny                                      # 400 rows from tests/fixtures (seconds)

Rows: MATH train (problem, solution) + GSM8K train (question, answer with its `#### N` line turned into \\boxed{N}),
cycled to --rows, split 90/10 into a finished build-data run; then the render stage (`stages.render.render`) under the
reference contract with only render.tokenizer = "qwen3-offline", the benchmark source (the real GSM8K test file), the
backend ("local") and the artifacts dir (<out>/render/artifacts) replaced, through the contract model. Prints the
seconds for the tokenizer load, the render stage, and the share of sampled rows token-identical to apply_chat_template.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from benchkit import REFERENCE_CONFIG, RealData, add_common_args, derive_contract, emit, out_dir, real_data, write_contract
from loraexp.artifacts import cache_root, open_run, run_id_for
from loraexp.chat import render_example
from loraexp.contracts import load_contract
from loraexp.data.text import canonical_problem_sha
from loraexp.files import read_jsonl, write_jsonl
from loraexp.stages import render
from loraexp.tokenization import load_saved_tokenizer, load_tokenizer


def real_rows(data: RealData, count: int) -> list[dict]:
    """MATH + GSM8K train rows in the build-data schema, cycled to `count` rows with distinct row ids."""
    pairs = []
    for line in data.math_train.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        pairs.append(("math", row["problem"], row["solution"], row["answer"]))
    for line in data.gsm8k_train.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        body, answer = row["answer"].rsplit("####", 1)
        pairs.append(("gsm8k", row["question"], body.rstrip() + f"\n\\boxed{{{answer.strip()}}}", answer.strip()))
    return [
        {"row_id": f"bench:{index}", "problem_source": source, "problem": problem, "generated_solution": solution,
         "expected_answer": expected, "canonical_problem_sha": canonical_problem_sha(problem)}
        for index, (source, problem, solution, expected) in ((i, pairs[i % len(pairs)]) for i in range(count))
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--rows", type=int, default=None, help="rows rendered (default 28,000; 400 with --tiny)")
    parser.add_argument("--check-rows", type=int, default=500, help="rows re-rendered one by one with apply_chat_template")
    args = parser.parse_args()
    count = args.rows or (400 if args.tiny else 28_000)
    data, workdir = real_data(args.tiny), out_dir(args, "render")
    contract = derive_contract(REFERENCE_CONFIG, {
        "experiment": {"name": "benchrender", "backend": "local", "artifacts_dir": str(workdir / "artifacts")},
        "data": {"decisions_file": None},
        "benchmark": {"source": str(data.gsm8k_test)},
        "render": {"tokenizer": "qwen3-offline"},
    })
    contract = load_contract(write_contract(contract, workdir / "bench.toml"))

    rows = real_rows(data, count)
    cut = len(rows) * 9 // 10
    data_run = open_run(contract, "build-data", run_id_for(contract, "build-data"), "overwrite")
    write_jsonl(data_run.path("train.jsonl"), rows[:cut])
    write_jsonl(data_run.path("val.jsonl"), rows[cut:])
    data_run.finish(["train.jsonl", "val.jsonl"], key_figure={"train_rows": cut, "val_rows": len(rows) - cut})

    started = time.perf_counter()
    load_tokenizer("qwen3-offline", cache_root(contract))  # build (first time) or load, timed apart
    tokenizer_seconds = time.perf_counter() - started
    run = open_run(contract, "render", run_id_for(contract, "render"), "overwrite")
    started = time.perf_counter()
    manifest = render.render(contract, run, data_run.dir, None)
    stage_seconds = time.perf_counter() - started

    tokenizer = load_saved_tokenizer(run.dir)
    rendered = read_jsonl(run.path("train.jsonl"))
    by_id = {row["row_id"]: row for row in rows}
    sample = random.Random(0).sample(rendered, min(args.check_rows, len(rendered)))
    identical = sum(
        (row["tokens"], row["weights"]) == render_example(tokenizer, contract.render.system_prompt, by_id[row["row_id"]]["problem"], by_id[row["row_id"]]["generated_solution"])
        for row in sample
    )
    stats = json.loads(run.path("stats.json").read_text())
    print(f"rows {len(rows)}: tokenizer load {tokenizer_seconds:.1f} s; render stage (load + render + stats + budget + hub folder) {stage_seconds:.1f} s")
    print(f"train mean tokens {stats['splits']['train']['tokens']['mean']:.1f}, system prompt {stats['system_prompt_tokens']} tokens, "
          f"quarantined {manifest['key_figure']['rejected']}; token-identical to apply_chat_template: {identical}/{len(sample)}")
    emit("render", {"rows": len(rows), "train_rows": manifest["key_figure"]["train_rows"], "val_rows": manifest["key_figure"]["val_rows"],
                    "rejected": manifest["key_figure"]["rejected"], "mean_tokens": stats["splits"]["train"]["tokens"]["mean"],
                    "system_prompt_tokens": stats["system_prompt_tokens"], "tokenizer_load_s": round(tokenizer_seconds, 2),
                    "stage_s": round(stage_seconds, 2), "identical": identical, "checked": len(sample), "target": "stage <= 15 s at 28,000 rows"})


if __name__ == "__main__":
    main()
