"""kill -9 of a real `loraexp train` / `loraexp eval` process at seeded random points, then a rerun:
the result equals the uninterrupted reference run (same selected checkpoints, metrics, predictions,
accuracies; no duplicated or torn rows; a manifest only for finished runs).

CI runs 2 kill points per stage (train: one condition x seed, to stay fast); the full sweep
(>= 5 points per stage, the whole stage, some kills at random delays) is marked slow:
    python -m pytest -m slow tests/test_crash_resume.py      (or: python benchmarks/crash_sweep.py)
"""

from __future__ import annotations

import os

import pytest

from crashkit import EVAL, TRAIN, crash_and_resume, eval_outcome, kill_points, train_outcome

SEED = int(os.environ.get("LORAEXP_CRASH_SEED", "0"))


ONE_TRAIN_RUN = ("--condition", "all_layer", "--seed", "1")


def total_rows(reference, prefix: str, only: str = "") -> int:
    outcome = train_outcome(reference) if prefix == TRAIN else eval_outcome(reference)
    return sum(len(run["metrics"] if prefix == TRAIN else run["predictions"]) for run_id, run in outcome.items() if only in run_id)


@pytest.mark.parametrize(("prefix", "args"), [(TRAIN, ONE_TRAIN_RUN), (EVAL, ())], ids=["train", "eval"])
def test_kill_9_then_rerun_equals_the_uninterrupted_run(reference_run, tmp_path, prefix, args):
    only = "all_layer-seed1" if args else ""
    for number, point in enumerate(kill_points(prefix, total_rows(reference_run, prefix, only), 2, SEED, stage_seconds=6.0)):  # 2 points: both by row count
        outcome = crash_and_resume(reference_run, tmp_path / f"kill{number}", prefix, point, args)
        assert outcome["killed"], f"the process finished before the kill {point}: the test proved nothing"


@pytest.mark.slow
@pytest.mark.parametrize("prefix", [TRAIN, EVAL], ids=["train", "eval"])
def test_crash_sweep(reference_run, tmp_path, prefix):
    outcomes = [crash_and_resume(reference_run, tmp_path / f"kill{number}", prefix, point)
                for number, point in enumerate(kill_points(prefix, total_rows(reference_run, prefix), 6, SEED + 1, stage_seconds=12.0))]
    assert sum(outcome["killed"] for outcome in outcomes) >= 5, outcomes
