"""Run directories, atomic writes, per-row JSONL and the manifest that marks a stage done.

Layout: `<artifacts_dir>/results/<run_id>/` with fixed file names. `contract.json` is written when a
run starts (so an unfinished run can still be checked against the contract), `manifest.json` last
and atomically: its presence with `status: pass` is the only proof that a stage finished.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

import orjson

from loraexp.contracts import Contract
from loraexp.errors import UserError

log = logging.getLogger(__name__)

IfExists = Literal["resume", "overwrite", "fail"]
MANIFEST = "manifest.json"
CONTRACT_SNAPSHOT = "contract.json"
SECRET_ENV_VARS = ("TINKER_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")
VERSIONED_PACKAGES = (
    "loraexp", "tinker", "tinker-cookbook", "torch", "transformers", "peft", "datasets",
    "tokenizers", "math-verify", "pydantic", "orjson", "numpy",
)


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def json_bytes(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON through a temp file + rename, so a reader never sees half a file."""
    write_bytes_atomic(path, json_bytes(obj) + b"\n")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def read_json(path: Path) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise UserError(f"missing file {path}: run the stage that writes it first") from None
    except orjson.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); delete it and rerun the stage that writes it") from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def repair_jsonl(path: Path) -> int:
    """Cut a torn last line (a crash mid-write) off a JSONL file; return the number of bytes dropped."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    good_end = len(data)
    if data and not data.endswith(b"\n"):
        good_end = data.rfind(b"\n") + 1
    else:
        last_start = data.rfind(b"\n", 0, max(len(data) - 1, 0)) + 1
        try:
            if data[last_start:].strip():
                orjson.loads(data[last_start:])
        except orjson.JSONDecodeError:
            good_end = last_start
    dropped = len(data) - good_end
    if dropped:
        log.warning("%s: dropped a torn last line (%d bytes) left by an interrupted write", path, dropped)
        with path.open("r+b") as handle:
            handle.truncate(good_end)
    return dropped


def read_jsonl(path: Path) -> list[dict]:
    """All rows of a JSONL file written by loraexp (a torn last line is repaired first)."""
    return list(iter_jsonl(path))


def iter_jsonl(path: Path) -> Iterator[dict]:
    repair_jsonl(path)
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise UserError(f"{path}:{number} is not valid JSON; the file is corrupt, rerun its stage with --if-exists overwrite") from None


class JsonlWriter:
    """Append-only JSONL, one orjson object per line, flushed after every row."""

    def __init__(self, path: Path, mode: Literal["a", "w"] = "a"):
        path.parent.mkdir(parents=True, exist_ok=True)
        if mode == "a":
            repair_jsonl(path)
        self.path = path
        self._handle = path.open(mode + "b")

    def write(self, row: dict) -> None:
        self._handle.write(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
        self._handle.flush()

    def write_many(self, rows: Iterable[dict]) -> None:
        for row in rows:
            self._handle.write(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    """Write a whole JSONL file atomically; return the row count."""
    lines = [orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n" for row in rows]
    write_bytes_atomic(path, b"".join(lines))
    return len(lines)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state() -> dict[str, Any]:
    """Commit and dirty flag of the loraexp checkout, or nulls outside a git checkout."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=source, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if commit.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def redact(text: str) -> str:
    """Replace the value of every secret environment variable in `text` by ***."""
    for name in SECRET_ENV_VARS:
        value = os.environ.get(name)
        if value:
            text = text.replace(value, "***")
    return text


def write_crash_log() -> Path:
    """Save the current exception's traceback (secrets redacted) under artifacts/logs/; return the path."""
    import traceback

    directory = Path("artifacts") / "logs"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"crash-{dt.datetime.now().strftime('%Y%m%dT%H%M%S%f')}.txt"
    path.write_text(redact(traceback.format_exc()), encoding="utf-8")
    return path


def results_root(contract: Contract) -> Path:
    return Path(contract.experiment.artifacts_dir) / "results"


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
            **(extra or {}),
        }
        write_json_atomic(self.dir / MANIFEST, manifest)
        return manifest


def is_finished(run_dir: Path) -> bool:
    manifest = run_dir / MANIFEST
    if not manifest.exists():
        return False
    try:
        return orjson.loads(manifest.read_bytes()).get("status") == "pass"
    except orjson.JSONDecodeError:
        return False


def _recorded_contract_sha(run_dir: Path) -> str | None:
    for name in (MANIFEST, CONTRACT_SNAPSHOT):
        path = run_dir / name
        if path.exists():
            try:
                return orjson.loads(path.read_bytes()).get("contract_sha256")
            except orjson.JSONDecodeError:
                continue
    return None


def stale_inputs(run_dir: Path) -> list[str]:
    """Input files of a finished run whose SHA-256 changed (or vanished) since it finished."""
    manifest = read_json(run_dir / MANIFEST)
    results = run_dir.parent
    stale = []
    for input_id, files in (manifest.get("inputs") or {}).items():
        for name, recorded in files.items():
            path = results / input_id / name
            if not path.exists() or file_sha256(path) != recorded:
                stale.append(f"{input_id}/{name}")
    return stale


def open_run(contract: Contract, stage: str, run_id: str, if_exists: IfExists = "resume", override: bool = False) -> Run:
    """Create or reopen `<artifacts>/results/<run_id>` for a stage, enforcing the contract and the policy.

    - a run made under another contract is refused unless `override` (recorded as protocol_mode: override);
    - `fail` refuses any existing run, `overwrite` wipes it, `resume` keeps what is there.
    """
    run_dir = results_root(contract) / run_id
    if run_dir.exists() and any(run_dir.iterdir()):
        if if_exists == "fail":
            raise UserError(f"run {run_id} already exists at {run_dir}; pass --if-exists resume or --if-exists overwrite")
        if if_exists == "resume" and is_finished(run_dir) and (changed := stale_inputs(run_dir)):
            log.info("%s: inputs changed since it finished (%s); rerunning", run_id, ", ".join(changed[:3]))
            shutil.rmtree(run_dir)
        elif if_exists == "overwrite":
            shutil.rmtree(run_dir)
        else:
            recorded = _recorded_contract_sha(run_dir)
            if recorded and recorded != contract.sha256 and not override:
                raise UserError(
                    f"run {run_id} was made under contract {recorded[:12]}, not this one ({contract.sha256[:12]}); "
                    "use another --run-id, --if-exists overwrite, or --override to mix them on purpose"
                )
    run_dir.mkdir(parents=True, exist_ok=True)
    mode = "override" if override else "strict"
    snapshot = run_dir / CONTRACT_SNAPSHOT
    if not snapshot.exists() or override:
        write_json_atomic(snapshot, {"stage": stage, "contract_sha256": contract.sha256, "contract": contract.model_dump(mode="json")})
    return Run(stage=stage, run_id=run_id, dir=run_dir, contract=contract, protocol_mode=mode)


def find_finished_run(contract: Contract, run_id: str, stage: str, override: bool = False) -> Path:
    """The directory of a finished input run; refuses unfinished runs and runs made under another contract."""
    run_dir = results_root(contract) / run_id
    if not is_finished(run_dir):
        raise UserError(f"{stage} run {run_id} is missing or unfinished at {run_dir}; run `loraexp {stage}` first")
    manifest = read_json(run_dir / MANIFEST)
    if manifest.get("contract_sha256") != contract.sha256 and not override:
        raise UserError(
            f"{stage} run {run_id} was made under contract {manifest.get('contract_sha256', '?')[:12]}, "
            f"not this one ({contract.sha256[:12]}); rerun `loraexp {stage}` or pass --override"
        )
    return run_dir


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
