"""Data-stage benchmarks: build-data on a 1M-row OpenMathInstruct-2-shaped parquet, contamination 13k x 1.3k.

Run from the repository root (not part of the test suite):

    python benchmarks/bench_data.py            # generates artifacts/bench/omi2_1m.parquet once (~1.4 GB)

Targets: build-data <= 30 s and peak RSS <= 1.5 GB; contamination <= 5 s. Each measured command runs the
real CLI in a fresh child process; wall time and the child's peak RSS (getrusage) are printed as JSON.
"""

from __future__ import annotations

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

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BENCH = REPO / "artifacts" / "bench"
# train_1M's problem_source counts: 29,468 original-source rows out of 1M
SOURCE_COUNTS = {"augmented_math": 831_985, "augmented_gsm8k": 138_547, "gsm8k": 14_764, "math": 14_704}
PROBLEM_CHARS, SOLUTION_CHARS = 300, 1_300  # mean text lengths of the real rows
ROW_GROUP_ROWS = 50_000
WRONG_BOX_SHARE = 0.04  # kept-source rows whose box disagrees with expected_answer, so the gate has work

# a child that runs one command and reports its wall time and peak RSS
MEASURE = (
    "import json, resource, subprocess, sys, time\n"
    "start = time.perf_counter(); rc = subprocess.call(sys.argv[1:]); wall = time.perf_counter() - start\n"
    "print(json.dumps({'rc': rc, 'wall_s': round(wall, 2), 'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)}))\n"
)


def vocabulary() -> np.ndarray:
    """Words of the real GSM8K and MATH train text, so generated text has realistic words and compression."""
    text = (SHARED_DATA / "gsm8k" / "train.jsonl").read_text(encoding="utf-8") + (SHARED_DATA / "math" / "train.jsonl").read_text(encoding="utf-8")
    return np.array(re.findall(r"[A-Za-z]+|\d+|[$\\{}=+.,]", text)[:2_000_000])


def corpus(words: np.ndarray, rng: np.random.Generator, chars: int) -> str:
    picked = words[rng.integers(0, len(words), size=chars // 5)]
    return " ".join(picked.tolist())


def write_parquet(path: Path) -> None:
    """1M rows in shuffled source order, unique text slices of the lengths above, in 50k-row row groups."""
    rng = np.random.default_rng(0)
    text = corpus(vocabulary(), rng, 40_000_000)
    sources = np.repeat(np.array(list(SOURCE_COUNTS)), list(SOURCE_COUNTS.values()))
    rng.shuffle(sources)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, pa.schema([(name, pa.string()) for name in ("problem", "generated_solution", "expected_answer", "problem_source")])) as writer:
        for start in range(0, len(sources), ROW_GROUP_ROWS):
            writer.write_table(row_group(text, sources[start:start + ROW_GROUP_ROWS], rng))
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


def config(name: str, source: Path) -> Path:
    """configs/demo.toml with this data source, the real GSM8K test as benchmark, artifacts under artifacts/bench."""
    text = (REPO / "configs" / "demo.toml").read_text(encoding="utf-8")
    replacements = {
        'name = "demo"': f'name = "{name}"',
        'artifacts_dir = "artifacts"': f'artifacts_dir = "{BENCH}"',
        'source = "demo"\ndemo_rows = 4000': f'source = "{source}"\ndemo_rows = 4000',
        'source = "demo"\ndemo_rows = 200': f'source = "{SHARED_DATA / "gsm8k" / "test.jsonl"}"\ndemo_rows = 200',
        'decisions_file = "configs/decisions/demo.jsonl"': "",
    }
    for old, new in replacements.items():
        if old not in text:
            raise SystemExit(f"configs/demo.toml changed: {old!r} not found; update benchmarks/bench_data.py")
        text = text.replace(old, new)
    path = BENCH / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def measure(*command: str | Path) -> dict:
    child = subprocess.run([sys.executable, "-c", MEASURE, *map(str, command)], capture_output=True, text=True, cwd=REPO)
    result = json.loads(child.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise SystemExit(f"{' '.join(map(str, command))} failed:\n{child.stderr[-2000:]}")
    return result


def contamination_source(path: Path) -> None:
    """13,000 gsm8k-source rows: the 7,473 real GSM8K train questions plus generated demo questions."""
    from loraexp.data.demo import clean_examples

    rows = []
    for line in (SHARED_DATA / "gsm8k" / "train.jsonl").read_bytes().splitlines():
        row = orjson.loads(line)
        reference = row["answer"].rsplit("####", 1)[1].strip()
        rows.append({"problem": row["question"], "generated_solution": f"{row['answer'].rsplit('####', 1)[0]}\\boxed{{{reference}}}", "expected_answer": reference, "problem_source": "gsm8k"})
    for question, solution in clean_examples(13_000 - len(rows), 0):
        rows.append({"problem": question, "generated_solution": solution, "expected_answer": solution.rsplit("{", 1)[1].rstrip("}"), "problem_source": "gsm8k"})
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))


def main() -> None:
    parquet = BENCH / "omi2_1m.parquet"
    if not parquet.exists():
        started = time.perf_counter()
        write_parquet(parquet)
        print(f"generated {parquet} ({parquet.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    build = measure("loraexp", "build-data", "-c", config("bench1m", parquet), "--if-exists", "overwrite")
    manifest = orjson.loads((BENCH / "results" / "bench1m-build-data" / "manifest.json").read_bytes())
    print(json.dumps({"build_data_1m": {**build, **manifest["key_figure"], "target": "<= 30 s, <= 1536 MB"}}))

    rows = BENCH / "contamination_13k.jsonl"
    contamination_source(rows)
    contamination_config = config("bench13k", rows)
    measure("loraexp", "build-data", "-c", contamination_config, "--if-exists", "overwrite")
    check = measure("loraexp", "contamination", "-c", contamination_config, "--if-exists", "overwrite")
    report = orjson.loads((BENCH / "results" / "bench13k-contamination" / "report.json").read_bytes())
    print(json.dumps({"contamination_13k_x_1319": {**check, "rows_checked": report["rows_checked"], "questions": report["benchmark"]["questions"],
                                                   "status": report["status"], "ngram_pairs": report["ngram_overlap"]["count"], "target": "<= 5 s"}}))


if __name__ == "__main__":
    main()
