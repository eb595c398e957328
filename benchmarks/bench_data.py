"""Data-stage benchmarks: build-data on a 1M-row OpenMathInstruct-2-shaped parquet, contamination 13k x 1.3k.

Run from the repository root (not part of the test suite):

    python benchmarks/bench_data.py            # generates artifacts/bench/omi2_1m.parquet once (~1 GB, ~30 s)
    python benchmarks/bench_data.py --tiny     # 20k rows / 1k x 250, real text from tests/fixtures (seconds)

The contracts are the reference contract (configs/lora-and-friends.toml: keep_sources gsm8k + math, its gate
phrases) with only the data source, the benchmark source (the real GSM8K test split), the artifacts dir (under
--out), the backend ("local": nothing here talks to a service) and decisions_file (none) replaced, through the
contract model. Targets: build-data <= 30 s and peak RSS <= 1.5 GB; contamination <= 5 s. Each measured command
runs the real CLI in a fresh child process; wall time and the child's peak RSS (getrusage) print as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from benchkit import REFERENCE_CONFIG, REPO, RealData, add_common_args, derive_contract, emit, out_dir, real_data, write_contract

# train_1M's problem_source counts: 29,468 original-source rows (14,764 gsm8k + 14,704 math) out of 1M
SOURCE_COUNTS = {"augmented_math": 831_985, "augmented_gsm8k": 138_547, "gsm8k": 14_764, "math": 14_704}
PROBLEM_CHARS, SOLUTION_CHARS = 300, 1_300  # mean text lengths of the real rows
WRONG_BOX_SHARE = 0.04  # kept-source rows whose box disagrees with expected_answer, so the gate has work
FULL = {"rows": 1_000_000, "row_group_rows": 50_000, "corpus_chars": 40_000_000, "contamination_rows": 13_000, "parquet": "omi2_1m.parquet"}
TINY = {"rows": 20_000, "row_group_rows": 5_000, "corpus_chars": 2_000_000, "contamination_rows": 1_000, "parquet": "omi2_20k_tiny.parquet"}

# a child that runs one command and reports its wall time and peak RSS
MEASURE = (
    "import json, resource, subprocess, sys, time\n"
    "start = time.perf_counter(); rc = subprocess.call(sys.argv[1:]); wall = time.perf_counter() - start\n"
    "print(json.dumps({'rc': rc, 'wall_s': round(wall, 2), 'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)}))\n"
)


def source_counts(rows: int) -> dict[str, int]:
    """train_1M's problem_source counts scaled to `rows` (exact at 1M; the two original sources stay > 0)."""
    if rows == sum(SOURCE_COUNTS.values()):
        return dict(SOURCE_COUNTS)
    scaled = {name: max(1, round(count * rows / 1_000_000)) for name, count in SOURCE_COUNTS.items()}
    scaled["augmented_math"] += rows - sum(scaled.values())
    return scaled


def vocabulary(data: RealData) -> np.ndarray:
    """Words of the real GSM8K and MATH train text, so generated text has realistic words and compression."""
    text = data.gsm8k_train.read_text(encoding="utf-8") + data.math_train.read_text(encoding="utf-8")
    return np.array(re.findall(r"[A-Za-z]+|\d+|[$\\{}=+.,]", text)[:2_000_000])


def corpus(words: np.ndarray, rng: np.random.Generator, chars: int) -> str:
    picked = words[rng.integers(0, len(words), size=chars // 5)]
    return " ".join(picked.tolist())


def write_parquet(path: Path, data: RealData, size: dict) -> None:
    """`size["rows"]` rows in shuffled source order, unique text slices of the lengths above, in fixed-size row groups."""
    rng = np.random.default_rng(0)
    text = corpus(vocabulary(data), rng, size["corpus_chars"])
    counts = source_counts(size["rows"])
    sources = np.repeat(np.array(list(counts)), list(counts.values()))
    rng.shuffle(sources)
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, pa.schema([(name, pa.string()) for name in ("problem", "generated_solution", "expected_answer", "problem_source")])) as writer:
        for start in range(0, len(sources), size["row_group_rows"]):
            writer.write_table(row_group(text, sources[start:start + size["row_group_rows"]], rng))
    tmp.rename(path)


def row_group(text: str, sources: np.ndarray, rng: np.random.Generator) -> pa.Table:
    n = len(sources)
    problem_len = np.clip(rng.normal(PROBLEM_CHARS, 120, n), 40, 2_000).astype(int)
    solution_len = np.clip(rng.normal(SOLUTION_CHARS, 500, n), 100, 6_000).astype(int)
    problem_at = rng.integers(0, len(text) - 2_000, n)
    solution_at = rng.integers(0, len(text) - 6_000, n)
    answers = rng.integers(0, 1000, n)
    wrong = rng.random(n) < WRONG_BOX_SHARE
    problems = [text[a:a + length] for a, length in zip(problem_at.tolist(), problem_len.tolist())]
    solutions = [f"{text[a:a + length]} \\boxed{{{box}}}" for a, length, box in zip(solution_at.tolist(), solution_len.tolist(), (answers + wrong).tolist())]
    return pa.table({"problem": problems, "generated_solution": solutions, "expected_answer": answers.astype(str).tolist(), "problem_source": sources.tolist()})


def config(out: Path, name: str, source: Path, benchmark: Path) -> Path:
    """The reference contract with this data source and benchmark file, artifacts under `out`, local backend, no decisions file."""
    contract = derive_contract(REFERENCE_CONFIG, {
        "experiment": {"name": name, "backend": "local", "artifacts_dir": str(out)},
        "data": {"source": str(source), "decisions_file": None},
        "benchmark": {"source": str(benchmark)},
    })
    return write_contract(contract, out / f"{name}.toml")


def measure(*command: str | Path) -> dict:
    child = subprocess.run([sys.executable, "-c", MEASURE, *map(str, command)], capture_output=True, text=True, cwd=REPO)
    lines = child.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines else {"rc": child.returncode}
    if result["rc"] != 0:
        raise SystemExit(f"{' '.join(map(str, command))} failed (exit {result['rc']}):\n{child.stdout[-2000:]}\n{child.stderr[-2000:]}")
    return result


def cli(*args: str | Path) -> tuple[str, ...]:
    """The real `loraexp` command line, run by this interpreter."""
    return (sys.executable, "-m", "loraexp.cli", *map(str, args))


def contamination_source(path: Path, data: RealData, rows_wanted: int) -> None:
    """`rows_wanted` gsm8k-source rows: the real GSM8K train questions plus generated demo questions."""
    from loraexp.demo.data import clean_examples

    rows = []
    for line in data.gsm8k_train.read_bytes().splitlines():
        row = orjson.loads(line)
        reference = row["answer"].rsplit("####", 1)[1].strip()
        rows.append({"problem": row["question"], "generated_solution": f"{row['answer'].rsplit('####', 1)[0]}\\boxed{{{reference}}}", "expected_answer": reference, "problem_source": "gsm8k"})
    rows = rows[:rows_wanted]
    for question, solution in clean_examples(rows_wanted - len(rows), 0):
        rows.append({"problem": question, "generated_solution": solution, "expected_answer": solution.rsplit("{", 1)[1].rstrip("}"), "problem_source": "gsm8k"})
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    args = parser.parse_args()
    size, data, out = (TINY if args.tiny else FULL), real_data(args.tiny), out_dir(args)

    parquet = out / size["parquet"]
    if not parquet.exists():
        started = time.perf_counter()
        write_parquet(parquet, data, size)
        print(f"generated {parquet} ({parquet.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    name = "bench1m" if not args.tiny else "benchtiny-build"
    build = measure(*cli("build-data", "-c", config(out, name, parquet, data.gsm8k_test), "--if-exists", "overwrite"))
    manifest = orjson.loads((out / "results" / f"{name}-build-data" / "manifest.json").read_bytes())
    kept_sources = {source: count for source, count in manifest["source"]["problem_source_counts"].items() if source in ("gsm8k", "math")}
    emit("build_data", {**build, "rows_total": manifest["source"]["rows_total"], "kept_source_rows": kept_sources, **manifest["key_figure"],
                        "parquet_gb": round(parquet.stat().st_size / 1e9, 2), "target": "<= 30 s, <= 1536 MB"})

    rows = out / f"contamination_{size['contamination_rows']}.jsonl"
    contamination_source(rows, data, size["contamination_rows"])
    name = "bench13k" if not args.tiny else "benchtiny-contamination"
    contamination_config = config(out, name, rows, data.gsm8k_test)
    measure(*cli("build-data", "-c", contamination_config, "--if-exists", "overwrite"))
    check = measure(*cli("contamination", "-c", contamination_config, "--if-exists", "overwrite"))
    report = orjson.loads((out / "results" / f"{name}-contamination" / "report.json").read_bytes())
    section = benchmark_section(report)
    emit("contamination", {**check, "rows_checked": section["rows_checked"], "questions": section["questions"], "status": report["status"],
                           "exact_pairs": section["exact_overlap"]["count"], "ngram_pairs": section["ngram_overlap"]["count"], "target": "<= 5 s"})


def benchmark_section(report: dict) -> dict:
    """The one benchmark's figures in report.json: rows_checked, questions, exact_overlap, ngram_overlap.

    One top-level section in the report of commit 59a0c5f; one section per benchmark under "benchmarks" once
    contracts can name several (the contract here has one, so there is one section either way)."""
    if "benchmarks" not in report:
        return {**report, "questions": report["benchmark"]["questions"]}
    (section,) = report["benchmarks"].values()
    return section


if __name__ == "__main__":
    main()
