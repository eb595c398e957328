"""Two processes never write one run: the second `loraexp train` on a run being written exits 2 with one line naming
the holder; a lock left by a killed process is taken over, and the rerun resumes to the uninterrupted result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import orjson

from crashkit import TRAIN, clone_without, loraexp, results, run_to_end, train_outcome

RUN = "demo-train-all_layer-seed0"
ARGS = ("train", "--config", "demo.toml", "--condition", "all_layer", "--seed", "0")
SLOW = {"LORAEXP_FAULT_LATENCY_S": "0.3", "LORAEXP_FAULT_RATE": "0"}  # the holder answers slowly, so it is still writing


def holder_pid(workdir) -> int | None:
    lock = workdir / "artifacts" / "locks" / f"{RUN}.lock"
    try:
        return orjson.loads(lock.read_bytes())["pid"]
    except (FileNotFoundError, orjson.JSONDecodeError, KeyError):
        return None


def test_second_process_on_a_run_exits_2_and_a_killed_holder_is_taken_over(reference_run, tmp_path):
    workdir = clone_without(reference_run, tmp_path / "w", (TRAIN, "demo-export", "demo-eval-", "demo-figures"))
    first = loraexp(workdir, *ARGS, env=SLOW, module="loraexp.testing.cli")
    deadline = time.monotonic() + 120
    while holder_pid(workdir) != first.pid and time.monotonic() < deadline:
        assert first.poll() is None, "the first train exited before taking its lock"
        time.sleep(0.05)
    assert holder_pid(workdir) == first.pid

    second = subprocess.run([sys.executable, "-m", "loraexp.cli", *ARGS], cwd=workdir, capture_output=True, text=True, timeout=120)
    assert first.poll() is None, "the holder finished before the second process asked; the test proved nothing"
    assert second.returncode == 2, second.stderr
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in second.stderr, second.stderr
    assert errors[0].startswith(f"error: run {RUN} is being written by another loraexp process (pid {first.pid}: ")
    assert " ".join(ARGS) in errors[0] and errors[0].endswith(f"wait for it to finish, or stop it (kill {first.pid}), then rerun")

    os.killpg(first.pid, signal.SIGKILL)  # kill -9: the kernel drops its flock, the lock file still names it
    first.wait()
    assert holder_pid(workdir) == first.pid
    run_to_end(workdir, *ARGS)  # takes the lock over and resumes from the killed run's last checkpoint
    assert holder_pid(workdir) not in (None, first.pid) and (results(workdir) / RUN / "manifest.json").exists()
    assert train_outcome(workdir)[RUN] == train_outcome(reference_run)[RUN]
