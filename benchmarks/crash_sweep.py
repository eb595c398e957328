"""Crash sweep: kill -9 a real `loraexp train` and `loraexp eval` at N seeded random points each, rerun,
and compare with an uninterrupted run (selected checkpoints, metrics, predictions, accuracies, no
duplicated or torn rows, manifests only for finished runs). Any difference raises.

    python benchmarks/crash_sweep.py --points 10 --seed 2         (about 4-5 min on 2 cores)

The same check, 2 points per stage, runs in CI: tests/test_crash_resume.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from crashkit import (EVAL, STAGE, TRAIN, DOWNSTREAM, clone_without, crash_and_resume, eval_outcome, kill_points,  # noqa: E402
                      make_workdir, run_to_end, train_outcome)


def time_stage(reference: Path, target: Path, prefix: str) -> float:
    """Seconds an uninterrupted `loraexp <stage>` process takes here, so a delay kill point lands inside it."""
    clone_without(reference, target, DOWNSTREAM[prefix])
    started = time.perf_counter()
    run_to_end(target, STAGE[prefix], "--config", "demo.toml")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=6, help="kill points per stage (every third is a random delay, the rest a random row count)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    from loraexp.demo_model import DemoBaseRecipe, ensure_demo_base

    with tempfile.TemporaryDirectory(prefix="crash-sweep-") as tmp:
        root = Path(tmp)
        base = ensure_demo_base(root / "cache", DemoBaseRecipe(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128,
                                                               examples=256, steps=4, batch_size=16, warmup_steps=1))
        (root / "reference").mkdir()
        reference = make_workdir(root / "reference", base)
        started = time.perf_counter()
        run_to_end(reference, "run", "--config", "demo.toml")
        print(f"reference run: {time.perf_counter() - started:.0f} s", flush=True)
        rows = {TRAIN: sum(len(r["metrics"]) for r in train_outcome(reference).values()),
                EVAL: sum(len(r["predictions"]) for r in eval_outcome(reference).values())}
        for prefix in (TRAIN, EVAL):
            stage_seconds = time_stage(reference, root / f"{prefix}timed", prefix)
            print(f"{STAGE[prefix]} uninterrupted: {stage_seconds:.1f} s (delay kill points fall in [1 s, 0.9 x that])", flush=True)
            for number, point in enumerate(kill_points(prefix, rows[prefix], args.points, args.seed, 0.9 * stage_seconds)):
                outcome = crash_and_resume(reference, root / f"{prefix}{number}", prefix, point)
                print(f"{outcome['stage']:5s} kill {point}: killed={outcome['killed']} rows at kill {outcome['rows_at_kill']}/{rows[prefix]} "
                      f"at {outcome['seconds']:.1f} s -> rerun identical to the uninterrupted run", flush=True)
        print(f"sweep passed in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
