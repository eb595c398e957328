"""`tinker://` paths mapped to directories, with the service's checkpoint TTLs.

Layout under the client's root:
    <root>/<run_id>/run.json                              the training run (base model, rank, flags, seed)
    <root>/<run_id>/weights/<name>/                       save_state: adapter + optimizer.pt + metadata.json
    <root>/<run_id>/sampler_weights/<name>/               save_weights_for_sampler: adapter + metadata.json
    <root>/<run_id>/external_weights/<name>/              save_weights_external: a PEFT adapter dir + metadata.json
A checkpoint's TTL is stored beside it (`metadata.json: expires_at`) and checked against the
store's clock on every access; an expired checkpoint is deleted and reported as not found.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

import orjson
from tinker.types.checkpoint import ParsedCheckpointTinkerPath

from loraexp.local_tinker.errors import bad_request, conflict, not_found

Clock = Callable[[], dt.datetime]
KIND_DIRS = {"training": "weights", "sampler": "sampler_weights", "external": "external_weights"}
METADATA = "metadata.json"
RUN_INFO = "run.json"
MIN_TTL_SECONDS = 3600  # the service refuses shorter TTLs
MAX_TTL_SECONDS = 10 * 365 * 24 * 3600


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _read_json(path: Path) -> dict[str, Any]:
    return orjson.loads(path.read_bytes())


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(orjson.dumps(obj, option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)


def check_ttl(ttl_seconds: int | None) -> None:
    if ttl_seconds is not None and not MIN_TTL_SECONDS <= ttl_seconds <= MAX_TTL_SECONDS:
        raise bad_request(f"ttl_seconds must be between {MIN_TTL_SECONDS} and {MAX_TTL_SECONDS} seconds, or None; got {ttl_seconds}")


class CheckpointStore:
    """Training runs and checkpoints on disk; every read honours `expires_at` against `clock()`."""

    def __init__(self, root: Path, clock: Clock = utc_now):
        self.root = Path(root)
        self.clock = clock

    # ---- training runs -------------------------------------------------------------------------
    def write_run(self, run_id: str, info: dict[str, Any]) -> None:
        run_dir = self.root / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(run_dir / RUN_INFO, {**info, "training_run_id": run_id, "created_at": self.clock().isoformat()})

    def read_run(self, run_id: str) -> dict[str, Any]:
        path = self.root / run_id / RUN_INFO
        if not path.is_file():
            raise not_found(f"training run {run_id} not found", "training_runs")
        return _read_json(path)

    # ---- checkpoints ---------------------------------------------------------------------------
    def tinker_path(self, run_id: str, kind: str, name: str) -> str:
        return f"tinker://{run_id}/{KIND_DIRS[kind]}/{name}"

    def save(self, run_id: str, kind: str, name: str, write: Callable[[Path], None], meta: dict[str, Any],
             ttl_seconds: int | None, overwrite: bool = True) -> str:
        """Write a checkpoint atomically (temp dir + rename) and return its tinker path."""
        check_ttl(ttl_seconds)
        if not name or "/" in name or name.startswith("."):
            raise bad_request(f"invalid checkpoint name {name!r}: use letters, digits, '-', '_' (no '/')")
        path = self.tinker_path(run_id, kind, name)
        final = self.root / run_id / KIND_DIRS[kind] / name
        if final.exists() and not self._expired_and_removed(final) and not overwrite:
            raise conflict(f"checkpoint {path} already exists; pass overwrite=True to replace it", "save_weights")
        tmp = final.with_name(f".{name}.{uuid.uuid4().hex}.tmp")
        tmp.mkdir(parents=True)
        try:
            write(tmp)
            now = self.clock()
            expires = None if ttl_seconds is None else (now + dt.timedelta(seconds=ttl_seconds)).isoformat()
            _write_json(tmp / METADATA, {**meta, "tinker_path": path, "checkpoint_type": kind, "name": name,
                                         "training_run_id": run_id, "created_at": now.isoformat(), "expires_at": expires})
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    def resolve(self, tinker_path: str) -> tuple[ParsedCheckpointTinkerPath, Path, dict[str, Any]]:
        """(parsed path, directory, metadata) of a live checkpoint; NotFoundError if missing or expired."""
        try:
            parsed = ParsedCheckpointTinkerPath.from_tinker_path(tinker_path)
        except ValueError:
            raise bad_request(f"invalid tinker path {tinker_path!r}: expected tinker://<run_id>/<weights|sampler_weights|external_weights>/<name>") from None
        directory = self.root / parsed.training_run_id / parsed.checkpoint_id
        if not (directory / METADATA).is_file():
            raise not_found(f"checkpoint {tinker_path} not found", "weights_info")
        meta = _read_json(directory / METADATA)
        if self._expired(meta):
            shutil.rmtree(directory, ignore_errors=True)
            raise not_found(f"checkpoint {tinker_path} not found: it expired at {meta['expires_at']}", "weights_info")
        return parsed, directory, meta

    def list(self, run_id: str) -> list[dict[str, Any]]:
        """Metadata of every live checkpoint of a run, oldest first (expired ones are deleted on the way)."""
        self.read_run(run_id)
        found = []
        for kind, folder in KIND_DIRS.items():
            for directory in sorted((self.root / run_id / folder).glob("[!.]*")):
                if (directory / METADATA).is_file() and not self._expired_and_removed(directory):
                    found.append(_read_json(directory / METADATA))
        return sorted(found, key=lambda meta: meta["created_at"])

    def set_ttl(self, tinker_path: str, ttl_seconds: int | None) -> None:
        check_ttl(ttl_seconds)
        _, directory, meta = self.resolve(tinker_path)
        expires = None if ttl_seconds is None else (self.clock() + dt.timedelta(seconds=ttl_seconds)).isoformat()
        _write_json(directory / METADATA, {**meta, "expires_at": expires})

    def delete(self, tinker_path: str) -> None:
        _, directory, _ = self.resolve(tinker_path)
        shutil.rmtree(directory)

    def _expired(self, meta: dict[str, Any]) -> bool:
        expires = meta.get("expires_at")
        return expires is not None and dt.datetime.fromisoformat(expires) <= self.clock()

    def _expired_and_removed(self, directory: Path) -> bool:
        if self._expired(_read_json(directory / METADATA)):
            shutil.rmtree(directory, ignore_errors=True)
            return True
        return False

