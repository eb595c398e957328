"""kill -9 a real `loraexp` process mid-stage, rerun it, and compare with an uninterrupted run.

Shared by tests/test_crash_resume.py (a few seeded kill points in CI) and benchmarks/crash_sweep.py
(the full sweep). Work dirs use a *relative* artifacts dir, so a copy of a finished run dir is the
same experiment under the same contract: each kill point starts from a copy of the reference with
the stage under test (and everything downstream) removed.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from datakit import set_key
from pipeline_kit import small_config

# fields that legitimately differ between two runs of the same experiment
VOLATILE = {"seconds", "state_path", "expires_at", "sampler_path", "step_seconds"}
TRAIN, EVAL = "demo-train-", "demo-eval-"
DOWNSTREAM = {TRAIN: ("demo-train-", "demo-export", "demo-eval-", "demo-figures"), EVAL: ("demo-eval-", "demo-figures")}
ROWS_FILE = {TRAIN: "metrics.jsonl", EVAL: "predictions.jsonl"}
STAGE = {TRAIN: "train", EVAL: "eval"}


def make_workdir(root: Path, base_dir: Path) -> Path:
    """The small contract in `root`, artifacts under the relative `artifacts/` (run every command with cwd=root)."""
    config = small_config(root, base_dir)
    config.write_text(set_key(config.read_text(encoding="utf-8"), "experiment", "artifacts_dir", "artifacts"), encoding="utf-8")
    return root


def results(workdir: Path) -> Path:
    return workdir / "artifacts" / "results"


def loraexp(workdir: Path, *args: str, log: Path | None = None, env: dict | None = None, module: str = "loraexp.cli") -> subprocess.Popen:
    """Start `python -m loraexp.cli ...` in `workdir` (its own process group, so kill -9 takes all of it); `module`
    "loraexp.testing.cli" is the same CLI with the service faults of LORAEXP_FAULT_* injected."""
    out = (log or workdir / "loraexp.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def run_to_end(workdir: Path, *args: str, env: dict | None = None, timeout: float = 600, module: str = "loraexp.cli") -> None:
    proc = loraexp(workdir, *args, env=env, module=module)
    assert proc.wait(timeout) == 0, f"`loraexp {' '.join(args)}` exited {proc.returncode}; see {workdir / 'loraexp.log'}"


def private_copy(source: Path, target: Path, monkeypatch) -> Path:
    """A copy of a work dir (relative artifacts/, so the same contract), made the current directory."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("loraexp.log"))
    monkeypatch.chdir(target)
    return target


def clone_without(reference: Path, target: Path, prefixes: tuple[str, ...]) -> Path:
    """A copy of the reference work dir with the run dirs of the stage under test and its dependents removed."""
    shutil.copytree(reference, target, ignore=shutil.ignore_patterns("loraexp.log"))
    for run_dir in results(target).iterdir():
        if run_dir.name.startswith(prefixes):
            shutil.rmtree(run_dir)
    return target


def complete_rows(workdir: Path, prefix: str) -> int:
    """Newline-terminated rows written so far across the stage's row files (metrics or predictions)."""
    return sum(path.read_bytes().count(b"\n") for path in results(workdir).glob(f"{prefix}*/{ROWS_FILE[prefix]}"))


@dataclass
class KillPoint:
    mode: str  # "rows": kill once the stage has written `value` rows; "delay": kill `value` seconds after start
    value: float

    def __str__(self) -> str:
        return f"after {int(self.value)} rows" if self.mode == "rows" else f"after {self.value:.2f} s"


def kill_at(workdir: Path, prefix: str, point: KillPoint, args: tuple[str, ...] = (), timeout: float = 300) -> dict:
    """Run the stage and kill -9 it at `point`; what the run dir looked like at that moment."""
    proc = loraexp(workdir, STAGE[prefix], "--config", "demo.toml", *args)
    started = time.monotonic()
    while proc.poll() is None and time.monotonic() - started < timeout:
        if (point.mode == "rows" and complete_rows(workdir, prefix) >= point.value) or (point.mode == "delay" and time.monotonic() - started >= point.value):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"killed": True, "rows_at_kill": complete_rows(workdir, prefix), "seconds": time.monotonic() - started}
        time.sleep(0.005)
    assert proc.poll() is not None, f"{STAGE[prefix]} still running after {timeout} s"
    return {"killed": False, "rows_at_kill": complete_rows(workdir, prefix), "seconds": time.monotonic() - started}


def jsonl_rows(path: Path, allow_torn_tail: bool = False) -> list[dict]:
    """Every row of a JSONL file; a torn (unterminated) last line only where a kill may have left one."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    assert allow_torn_tail or tail == b"", f"{path} ends with a torn line {tail[:60]!r}"
    return [orjson.loads(line) for line in lines]  # raises on a corrupt complete line


def stable(row: dict) -> dict:
    return {key: value for key, value in row.items() if key not in VOLATILE}


def manifest_is_truthful(run_dir: Path) -> bool:
    """A manifest exists only for a finished run, and its recorded outputs are the files on disk."""
    import hashlib

    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    for name, entry in manifest["outputs"].items():
        if hashlib.sha256((run_dir / name).read_bytes()).hexdigest() != entry["sha256"]:
            return False
    return manifest["status"] == "pass"


def check_killed_state(workdir: Path, prefix: str) -> None:
    """Right after a kill: no stray manifest, no duplicated row; at most one torn line per file."""
    for run_dir in results(workdir).glob(f"{prefix}*"):
        rows_path = run_dir / ROWS_FILE[prefix]
        rows = jsonl_rows(rows_path, allow_torn_tail=True) if rows_path.exists() else []
        keys = [row["step"] if prefix == TRAIN else row["example_id"] for row in rows]
        assert len(keys) == len(set(keys)), f"{rows_path}: duplicated rows after the kill"
        if (run_dir / "manifest.json").exists():
            assert manifest_is_truthful(run_dir), f"{run_dir.name}: manifest does not match its outputs"
    for name in ("demo-export", "demo-figures") if prefix == TRAIN else ("demo-figures",):
        assert not (results(workdir) / name / "manifest.json").exists(), f"{name} finished although its input stage was killed"


def train_outcome(workdir: Path) -> dict:
    """Per train run: the selected checkpoint, every checkpoint record and every metrics row (volatile fields dropped)."""
    outcome = {}
    for run_dir in sorted(results(workdir).glob(f"{TRAIN}*")):
        summary = orjson.loads((run_dir / "summary.json").read_bytes())
        metrics = jsonl_rows(run_dir / "metrics.jsonl")
        assert [row["step"] for row in metrics] == list(range(1, summary["total_steps"] + 1)), f"{run_dir.name}: metrics steps duplicated or missing"
        assert manifest_is_truthful(run_dir)
        outcome[run_dir.name] = {"selected": (summary["selected_step"], summary["val_nll"], summary["checkpoint_name"]),
                                 "summary": stable(summary), "checkpoints": [stable(r) for r in jsonl_rows(run_dir / "checkpoints.jsonl")],
                                 "metrics": [stable(r) for r in metrics]}
    return outcome


def eval_outcome(workdir: Path) -> dict:
    """Per eval run: accuracies and every prediction row (by example id; each exactly once)."""
    outcome = {}
    for run_dir in sorted(p for p in results(workdir).glob(f"{EVAL}*") if "-probe" not in p.name):
        rows = jsonl_rows(run_dir / "predictions.jsonl")
        ids = [row["example_id"] for row in rows]
        assert len(ids) == len(set(ids)), f"{run_dir.name}: duplicated predictions"
        summary = orjson.loads((run_dir / "summary.json").read_bytes())
        assert manifest_is_truthful(run_dir)
        outcome[run_dir.name] = {"accuracy": (summary["strict_accuracy"], summary["lenient_accuracy"], summary["total"]),
                                 "predictions": sorted((stable(row) for row in rows), key=lambda row: row["example_id"])}
    return outcome


OUTCOME = {TRAIN: train_outcome, EVAL: eval_outcome}


def crash_and_resume(reference: Path, target: Path, prefix: str, point: KillPoint, args: tuple[str, ...] = ()) -> dict:
    """Copy the reference without the stage, kill the stage (`args`: e.g. one --condition/--seed) at `point`,
    rerun the same command, compare with the reference."""
    clone_without(reference, target, DOWNSTREAM[prefix])
    killed = kill_at(target, prefix, point, args)
    check_killed_state(target, prefix)
    run_to_end(target, STAGE[prefix], "--config", "demo.toml", *args)
    got = OUTCOME[prefix](target)
    expected = {run_id: value for run_id, value in OUTCOME[prefix](reference).items() if not args or run_id in got}
    assert got.keys() == expected.keys(), f"{point}: runs {sorted(got)} != {sorted(expected)}"
    for run_id in expected:
        assert got[run_id] == expected[run_id], f"{run_id} differs from the uninterrupted run after a kill {point}"
    shutil.rmtree(target)
    return {"stage": STAGE[prefix], "point": str(point), **killed}


def kill_points(prefix: str, total_rows: int, count: int, seed: int, stage_seconds: float) -> list[KillPoint]:
    """`count` seeded kill points: mostly by row count (inside the stage), every third by a random delay from launch."""
    rng = random.Random(f"{prefix}{seed}")
    return [KillPoint("delay", round(rng.uniform(1.0, stage_seconds), 2)) if i % 3 == 2 else KillPoint("rows", rng.randint(1, total_rows - 1))
            for i in range(count)]
