"""Crash sweep: kill -9 a real `loraexp train` and `loraexp eval` at N seeded random points each, rerun,
and compare with an uninterrupted run (selected checkpoints, metrics, predictions, accuracies, no
duplicated or torn rows, manifests only for finished runs). Any difference raises.

    python benchmarks/crash_sweep.py --points 10 --seed 2         (about 4-5 min on 2 cores)
    python benchmarks/crash_sweep.py --tiny                       (1 point per stage on a smaller contract)

The contract is the small one of tests/pipeline_kit.py (SMALL) derived from configs/demo.toml through the contract
model; `--tiny` shrinks it further (one seed, fewer rows, steps and questions) and runs every process with one OpenMP
thread (`--threads`). The same check, 2 points per stage, runs in CI: tests/test_crash_resume.py. Work dirs are
created under `--out` (default artifacts/bench) and removed at the end, or kept there when the sweep fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchkit import DEMO_CONFIG, REPO, add_common_args, derive_contract, emit, out_dir, write_contract

sys.path.insert(0, str(REPO / "tests"))

from crashkit import (EVAL, STAGE, TRAIN, DOWNSTREAM, clone_without, crash_and_resume, eval_outcome, kill_points,  # noqa: E402
                      run_to_end, train_outcome)
from pipeline_kit import SMALL  # noqa: E402

# --tiny: SMALL shrunk further (one seed, ~7 train steps per run, 8 questions); the stages and the kill/rerun path are the same
TINY = {
    "data": {"demo_rows": 300},
    "benchmark": {"demo_rows": 8},
    "lr_select": {"train_rows": 32, "val_rows": 16, "lr_grid": [1e-3], "steps": 2, "validate_at": [2]},
    "train": {"seeds": [0]},
    "eval": {"max_new_tokens": 6, "determinism_subset": 2},
    "decision": {"bootstrap_samples": 100},
}


def contract_edits(root: Path, base_dir: Path, tiny: bool) -> dict[str, dict]:
    """configs/demo.toml -> the small contract of tests/pipeline_kit.py (as crashkit.make_workdir builds it), optionally TINY."""
    edits: dict[str, dict] = {
        "experiment": {"base_model": str(base_dir), "artifacts_dir": "artifacts"},  # relative: a copied work dir is the same experiment
        "data": {"keep_sources": ["gsm8k", "math"], "decisions_file": str(root / "decisions.jsonl")},
    }
    for extra in (SMALL, TINY if tiny else {}):
        for section, values in extra.items():
            edits[section] = {**edits.get(section, {}), **values}
    return edits


def make_workdir(root: Path, base_dir: Path, tiny: bool) -> Path:
    """`root/demo.toml` (written from the contract model) and its empty decisions file; run every command with cwd=root."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "decisions.jsonl").write_text("")
    write_contract(derive_contract(DEMO_CONFIG, contract_edits(root, base_dir, tiny)), root / "demo.toml")
    return root


def time_stage(reference: Path, target: Path, prefix: str) -> float:
    """Seconds an uninterrupted `loraexp <stage>` process takes here, so a delay kill point lands inside it."""
    clone_without(reference, target, DOWNSTREAM[prefix])
    started = time.perf_counter()
    run_to_end(target, STAGE[prefix], "--config", "demo.toml")
    seconds = time.perf_counter() - started
    shutil.rmtree(target)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--points", type=int, default=None, help="kill points per stage (every third is a random delay, the rest a random row count; default 6, 1 with --tiny)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP/MKL threads of every loraexp process (default: inherited; 1 with --tiny: on a busy 2-core machine torch's "
                             "2 OpenMP threads made the tiny train stage ~20x slower)")
    args = parser.parse_args()
    points = args.points if args.points is not None else (1 if args.tiny else 6)
    threads = args.threads if args.threads is not None else (1 if args.tiny else None)
    if threads is not None:  # the reference run and every killed / rerun process inherit it, so they compute alike
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    from loraexp.demo.base_model import DemoBaseRecipe, ensure_demo_base

    root = Path(tempfile.mkdtemp(dir=out_dir(args), prefix="crash-sweep-"))
    outcomes: list[dict] = []
    try:
        base = ensure_demo_base(root / "cache", DemoBaseRecipe(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128,
                                                               examples=256, steps=4, batch_size=16, warmup_steps=1))
        reference = make_workdir(root / "reference", base, args.tiny)
        started = time.perf_counter()
        run_to_end(reference, "run", "--config", "demo.toml")
        reference_seconds = time.perf_counter() - started
        print(f"reference run: {reference_seconds:.0f} s", flush=True)
        rows = {TRAIN: sum(len(r["metrics"]) for r in train_outcome(reference).values()),
                EVAL: sum(len(r["predictions"]) for r in eval_outcome(reference).values())}
        stage_seconds: dict[str, float | None] = {}
        for prefix in (TRAIN, EVAL):
            # the stage is timed only to place delay kill points (every third point); with fewer than 3 points there are none
            stage_seconds[prefix] = time_stage(reference, root / f"{prefix}timed", prefix) if points >= 3 else None
            if stage_seconds[prefix] is not None:
                print(f"{STAGE[prefix]} uninterrupted: {stage_seconds[prefix]:.1f} s (delay kill points fall in [1 s, 0.9 x that])", flush=True)
            for number, point in enumerate(kill_points(prefix, rows[prefix], points, args.seed, max(0.9 * (stage_seconds[prefix] or 0.0), 1.0))):
                outcome = crash_and_resume(reference, root / f"{prefix}{number}", prefix, point)
                outcomes.append({**outcome, "rows_total": rows[prefix], "identical": True})
                print(f"{outcome['stage']:5s} kill {point}: killed={outcome['killed']} rows at kill {outcome['rows_at_kill']}/{rows[prefix]} "
                      f"at {outcome['seconds']:.1f} s -> rerun identical to the uninterrupted run", flush=True)
        total = time.perf_counter() - started
        print(f"sweep passed in {total:.0f} s")
    except BaseException:
        logs = sorted(root.rglob("loraexp.log"), key=lambda path: path.stat().st_mtime)
        if logs:
            print(f"work dir kept for inspection: {root}; last loraexp.log ({logs[-1]}):\n{logs[-1].read_text(errors='replace')[-3000:]}", file=sys.stderr)
        raise
    shutil.rmtree(root, ignore_errors=True)
    emit("crash_sweep", {"points_per_stage": points, "seed": args.seed, "threads": threads or os.environ.get("OMP_NUM_THREADS"), "reference_s": round(reference_seconds, 1),
                         "train_rows": rows[TRAIN], "eval_rows": rows[EVAL], "train_s": stage_seconds[TRAIN] and round(stage_seconds[TRAIN], 1), "eval_s": stage_seconds[EVAL] and round(stage_seconds[EVAL], 1),
                         "kill_points": len(outcomes), "killed": sum(o["killed"] for o in outcomes), "identical": sum(o["identical"] for o in outcomes),
                         "outcomes": json.loads(json.dumps(outcomes, default=str)), "seconds": round(total, 1)})


if __name__ == "__main__":
    main()
