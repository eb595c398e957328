"""Run directories: the one rule for opening or reusing a run, the lock that keeps two processes apart, the manifest.

Layout: `<artifacts_dir>/results/<run_id>/` with fixed file names. `contract.json` is written when a
run starts (so an unfinished run can still be checked against the contract), `manifest.json` last
and atomically: its presence with `status: pass` is the only proof that a stage finished.
"""

from __future__ import annotations

import fcntl
import functools
import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

import orjson

from loraexp.contracts import Contract
from loraexp.errors import UserError
from loraexp.files import file_sha256, now_utc, read_json, redact, write_json_atomic

log = logging.getLogger(__name__)

IfExists = Literal["resume", "overwrite", "fail"]
MANIFEST = "manifest.json"
CONTRACT_SNAPSHOT = "contract.json"
VERSIONED_PACKAGES = (
    "loraexp", "tinker", "tinker-cookbook", "torch", "transformers", "peft", "datasets",
    "tokenizers", "math-verify", "pydantic", "orjson", "numpy",
)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@functools.cache
def git_state() -> dict[str, Any]:
    """Commit and dirty flag of the loraexp checkout, or nulls outside a git checkout (read once per process)."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=source, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if commit.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def results_root(contract: Contract) -> Path:
    return Path(contract.experiment.artifacts_dir) / "results"


def cache_root(contract: Contract) -> Path:
    """Built tokenizers and the demo base model live under <artifacts_dir>/cache/ (shared by every run)."""
    return Path(contract.experiment.artifacts_dir) / "cache"


def describe_output(path: Path) -> dict[str, Any]:
    entry: dict[str, Any] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    if path.suffix == ".jsonl":
        with path.open("rb") as handle:
            entry["rows"] = sum(1 for line in handle if line.strip())
    return entry


@dataclass
class Run:
    """One stage's run directory, opened under a contract and an if-exists policy."""

    stage: str
    run_id: str
    dir: Path
    contract: Contract
    protocol_mode: Literal["strict", "override"] = "strict"
    started_at: str = field(default_factory=now_utc)
    inputs: dict[str, dict[str, str]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)  # more for the manifest (e.g. the service a stage talked to)

    def path(self, name: str) -> Path:
        return self.dir / name

    @property
    def finished(self) -> bool:
        return is_finished(self.dir)

    def add_input(self, run: "Run | Path", files: Iterable[str]) -> None:
        """Record an input run and the SHA-256 of the files read from it (its manifest always included,
        so a rerun of the input stage makes this run stale)."""
        run_dir = run.dir if isinstance(run, Run) else run
        names = sorted(set(files) | {MANIFEST})
        self.inputs[run_dir.name] = {name: file_sha256(run_dir / name) for name in names if (run_dir / name).exists()}

    def finish(self, outputs: Iterable[str], key_figure: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> dict:
        """Write manifest.json last, atomically: the stage is done once it exists with status pass."""
        manifest = {
            "stage": self.stage,
            "run_id": self.run_id,
            "status": "pass",
            "contract_sha256": self.contract.sha256,
            "protocol_mode": self.protocol_mode,
            "inputs": self.inputs,
            "outputs": {name: describe_output(self.dir / name) for name in sorted(set(outputs))},
            "key_figure": key_figure or {},
            "versions": package_versions(),
            "git": git_state(),
            "command": redact(" ".join(sys.argv)),
            "started_at": self.started_at,
            "finished_at": now_utc(),
            **self.facts,
            **(extra or {}),
        }
        write_json_atomic(self.dir / MANIFEST, manifest)
        unlock_run(self.contract, self.run_id)
        return manifest


def _json_or_none(path: Path) -> dict | None:
    """A run file's JSON object; None when it is missing or torn (a writer killed mid-write)."""
    try:
        return orjson.loads(path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None


def finished_manifest(run_dir: Path) -> dict | None:
    """The manifest of a finished run; None while the run is missing or unfinished."""
    manifest = _json_or_none(run_dir / MANIFEST)
    return manifest if manifest is not None and manifest.get("status") == "pass" else None


def is_finished(run_dir: Path) -> bool:
    return finished_manifest(run_dir) is not None


def _recorded_contract_sha(run_dir: Path) -> str | None:
    for name in (MANIFEST, CONTRACT_SNAPSHOT):
        recorded = _json_or_none(run_dir / name)
        if recorded is not None:
            return recorded.get("contract_sha256")
    return None


def stale_inputs(run_dir: Path, manifest: dict | None = None) -> list[str]:
    """Input files of a finished run whose SHA-256 changed (or vanished) since it finished."""
    manifest = manifest if manifest is not None else read_json(run_dir / MANIFEST)
    results = run_dir.parent
    stale = []
    for input_id, files in (manifest.get("inputs") or {}).items():
        for name, recorded in files.items():
            path = results / input_id / name
            if not path.exists() or file_sha256(path) != recorded:
                stale.append(f"{input_id}/{name}")
    return stale


def why_redo(run_dir: Path, inputs: Iterable[Path], fingerprint: dict[str, Any]) -> list[str]:
    """Why a finished run no longer stands for what would be computed now (empty: reuse it).

    Three reasons, one rule for every stage: it was made from other input runs (another --data-run,
    say), a file it read from an input run changed since, or something outside the artifacts that the
    stage fingerprints (a decisions file, a source dataset's revision) changed.
    """
    manifest = read_json(run_dir / MANIFEST)
    recorded = manifest.get("inputs") or {}
    reasons = [f"it was made from other input runs than {path.name}" for path in inputs if path.name not in recorded]
    reasons += [f"{name} changed" for name in stale_inputs(run_dir, manifest)]
    reasons += [f"{key} changed" for key, value in fingerprint.items() if manifest.get(key) != value]
    return reasons


def open_run(contract: Contract, stage: str, run_id: str, if_exists: IfExists = "resume", override: bool = False,
             inputs: Iterable[Path] = (), fingerprint: dict[str, Any] | None = None) -> "Run | None":
    """Open `<artifacts>/results/<run_id>` for a stage, or return None when its finished run can be reused.

    The one rule, for every stage and every run:
    - another process writing this run: refused (see `lock_run`);
    - `fail`: refused when anything is there; `overwrite`: wiped and started again;
    - made under another contract: refused unless `override` (recorded as protocol_mode: override);
    - finished, and nothing in `why_redo` (input runs, their files, `fingerprint`): reused (None);
    - finished but stale: wiped and redone, saying why; unfinished: resumed from what is there.
    """
    inputs, fingerprint = list(inputs), fingerprint or {}
    run_dir = results_root(contract) / run_id
    lock_run(contract, run_id)
    if run_dir.exists() and any(run_dir.iterdir()):
        if if_exists == "fail":
            raise UserError(f"run {run_id} already exists at {run_dir}; pass --if-exists resume or --if-exists overwrite")
        recorded = _recorded_contract_sha(run_dir)
        if if_exists == "overwrite":
            shutil.rmtree(run_dir)
        elif recorded and recorded != contract.sha256 and not override:
            raise UserError(
                f"run {run_id} was made under contract {recorded[:12]}, not this one ({contract.sha256[:12]}); "
                "use another --run-id, --if-exists overwrite, or --override to mix them on purpose"
            )
        elif is_finished(run_dir):
            reasons = why_redo(run_dir, inputs, fingerprint)
            if not reasons:
                log.info("%s: %s already finished with unchanged inputs (pass --if-exists overwrite to redo it)", stage, run_id)
                unlock_run(contract, run_id)
                return None
            log.info("%s: redoing %s: %s", stage, run_id, "; ".join(reasons[:3]))
            shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    mode = "override" if override else "strict"
    snapshot = run_dir / CONTRACT_SNAPSHOT
    if not snapshot.exists() or override:
        write_json_atomic(snapshot, {"stage": stage, "contract_sha256": contract.sha256, "contract": contract.model_dump(mode="json")})
    return Run(stage=stage, run_id=run_id, dir=run_dir, contract=contract, protocol_mode=mode, facts=dict(fingerprint))  # the manifest records it


class RunLocked(UserError):
    """Another live process holds the run's lock."""


_HELD_LOCKS: dict[Path, int] = {}  # lock file -> open fd, for the runs this process is writing


def _lock_path(contract: Contract, run_id: str) -> Path:
    # beside the results, not inside the run dir: an overwrite deletes the run dir while the lock is held
    return Path(contract.experiment.artifacts_dir) / "locks" / f"{run_id}.lock"


def lock_run(contract: Contract, run_id: str) -> None:
    """Take the run's lock for this process, or refuse in one line naming the process that holds it.

    An flock on `<artifacts>/locks/<run_id>.lock`: the kernel drops it when its process dies, kill -9
    included, so a lock left by a killed run is simply taken over by the next one.
    """
    path = _lock_path(contract, run_id)
    if path in _HELD_LOCKS:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        pid = holder.get("pid", "?")
        raise RunLocked(f"run {run_id} is being written by another loraexp process (pid {pid}: {holder.get('command', '?')}); "
                        f"wait for it to finish, or stop it (kill {pid}), then rerun") from None
    os.ftruncate(fd, 0)
    os.write(fd, orjson.dumps({"pid": os.getpid(), "command": redact(" ".join(sys.argv)), "since": now_utc()}))
    _HELD_LOCKS[path] = fd


def _read_holder(fd: int) -> dict:
    try:
        return orjson.loads(os.pread(fd, 4096, 0))
    except (OSError, orjson.JSONDecodeError):
        return {}


def unlock_run(contract: Contract, run_id: str) -> None:
    fd = _HELD_LOCKS.pop(_lock_path(contract, run_id), None)
    if fd is not None:
        os.close(fd)  # closing the last fd of the open file releases the flock


def release_locks() -> None:
    """Release every run lock this process holds (the end of a command)."""
    for fd in _HELD_LOCKS.values():
        os.close(fd)
    _HELD_LOCKS.clear()


def find_finished_run(contract: Contract, run_id: str, stage: str, override: bool = False) -> Path:
    """The directory of a finished input run; refuses unfinished runs and runs made under another contract."""
    run_dir = results_root(contract) / run_id
    manifest = finished_manifest(run_dir)
    if manifest is None:
        raise UserError(f"{stage} run {run_id} is missing or unfinished at {run_dir}; run `loraexp {stage}` first")
    if manifest.get("contract_sha256") != contract.sha256 and not override:
        raise UserError(
            f"{stage} run {run_id} was made under contract {manifest.get('contract_sha256', '?')[:12]}, "
            f"not this one ({contract.sha256[:12]}); rerun `loraexp {stage}` or pass --override"
        )
    return run_dir


def input_run_of(run_dir: Path, stage: str) -> Path | None:
    """The input run of `run_dir` that `stage` made (e.g. the build-data run a render run was made from)."""
    for input_id in (read_json(run_dir / MANIFEST).get("inputs") or {}):
        candidate = run_dir.parent / input_id
        if (finished_manifest(candidate) or {}).get("stage") == stage:
            return candidate
    return None


def run_id_for(contract: Contract, stage: str, *parts: str | int) -> str:
    """Default run id: `<experiment>-<stage>[-<part>...]`, e.g. `demo-train-all_layer-seed0`."""
    return "-".join([contract.experiment.name, stage, *(str(part) for part in parts)])


def list_runs(root: Path) -> list[dict[str, Any]]:
    """Every run dir under `<root>/results`, with its manifest (or its contract snapshot if unfinished)."""
    results = root / "results"
    runs = []
    for run_dir in sorted(results.iterdir()) if results.exists() else []:
        if not run_dir.is_dir():
            continue
        manifest_path = run_dir / MANIFEST
        info: dict[str, Any] = {"run_id": run_dir.name, "dir": run_dir, "status": "unfinished", "stage": "?"}
        if manifest_path.exists():
            try:
                info.update(orjson.loads(manifest_path.read_bytes()))
            except orjson.JSONDecodeError:
                info["status"] = "corrupt manifest"
        elif (run_dir / CONTRACT_SNAPSHOT).exists():
            try:
                snap = orjson.loads((run_dir / CONTRACT_SNAPSHOT).read_bytes())
                info.update(stage=snap.get("stage", "?"), contract_sha256=snap.get("contract_sha256"))
            except orjson.JSONDecodeError:
                pass
        info["mtime"] = run_dir.stat().st_mtime
        runs.append(info)
    return runs
