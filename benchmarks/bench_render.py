"""Render 28k real rows with the Qwen3 vocabulary (qwen3-offline) and time the stage. Run by hand, not in tests:

    python benchmarks/bench_render.py [--rows 28000] [--data /work/shared/data] [--workdir /tmp/bench-render]

Rows: MATH train (problem, solution) + GSM8K train (question, answer with its `#### N` line turned into \\boxed{N}),
cycled to --rows, split 90/10 into a finished build-data run; then `stages.render.run` under a copy of the reference
contract with render.tokenizer = "qwen3-offline". Prints the seconds for the tokenizer load, the render stage, and
the share of rows checked token-identical against apply_chat_template.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from pathlib import Path

from loraexp.artifacts import open_run, run_id_for
from loraexp.files import read_jsonl, write_jsonl
from loraexp.contracts import load_contract
from loraexp.stages import render
from loraexp.text import canonical_problem_sha
from loraexp.tokenization import load_saved_tokenizer, load_tokenizer
from loraexp.chat import render_example

REPO = Path(__file__).resolve().parents[1]


def real_rows(data: Path, count: int) -> list[dict]:
    """MATH + GSM8K train rows in the build-data schema, cycled to `count` rows with distinct row ids."""
    pairs = []
    for line in (data / "math" / "train.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        pairs.append(("math", row["problem"], row["solution"], row["answer"]))
    for line in (data / "gsm8k" / "train.jsonl").read_text(encoding="utf-8").splitlines():
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
    parser.add_argument("--rows", type=int, default=28_000)
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-render"))
    args = parser.parse_args()
    text = (REPO / "configs" / "lora-and-friends.toml").read_text(encoding="utf-8")
    text = re.sub(r'artifacts_dir = ".*"', f'artifacts_dir = "{args.workdir / "artifacts"}"', text)
    text = text.replace('tokenizer = "Qwen/Qwen3-8B"', 'tokenizer = "qwen3-offline"')
    text = re.sub(r'source = "openai/gsm8k"', f'source = "{args.data / "gsm8k" / "test.jsonl"}"', text)
    args.workdir.mkdir(parents=True, exist_ok=True)
    config = args.workdir / "bench.toml"
    config.write_text(text, encoding="utf-8")
    contract = load_contract(config)

    rows = real_rows(args.data, args.rows)
    cut = len(rows) * 9 // 10
    data_run = open_run(contract, "build-data", run_id_for(contract, "build-data"), "overwrite")
    write_jsonl(data_run.path("train.jsonl"), rows[:cut])
    write_jsonl(data_run.path("val.jsonl"), rows[cut:])
    data_run.finish(["train.jsonl", "val.jsonl"], key_figure={"train_rows": cut, "val_rows": len(rows) - cut})

    started = time.perf_counter()
    load_tokenizer("qwen3-offline", render.cache_root(contract))  # build (first time) or load, timed apart
    tokenizer_seconds = time.perf_counter() - started
    run = open_run(contract, "render", run_id_for(contract, "render"), "overwrite")
    started = time.perf_counter()
    manifest = render.run(contract, run, data_run.dir)
    stage_seconds = time.perf_counter() - started

    tokenizer = load_saved_tokenizer(run.dir)
    rendered = read_jsonl(run.path("train.jsonl"))
    by_id = {row["row_id"]: row for row in rows}
    sample = random.Random(0).sample(rendered, 500)
    identical = sum(
        (row["tokens"], row["weights"]) == render_example(tokenizer, contract.render.system_prompt, by_id[row["row_id"]]["problem"], by_id[row["row_id"]]["generated_solution"])
        for row in sample
    )
    stats = json.loads(run.path("stats.json").read_text())
    print(f"rows {len(rows)}: tokenizer load {tokenizer_seconds:.1f} s; render stage (load + render + stats + budget + hub folder) {stage_seconds:.1f} s")
    print(f"train mean tokens {stats['splits']['train']['tokens']['mean']:.1f}, system prompt {stats['system_prompt_tokens']} tokens, "
          f"quarantined {manifest['key_figure']['rejected']}; token-identical to apply_chat_template: {identical}/{len(sample)}")


if __name__ == "__main__":
    main()
