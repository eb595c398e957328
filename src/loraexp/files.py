"""Files that survive a crash and hold no secret: atomic writes, flushed per-row JSONL with torn-line repair, SHA-256s.

Every artifact loraexp writes goes through here, so a kill -9 at any moment leaves either the old
file or the new one, and at most one torn last line in an append-only JSONL (dropped on the next read).
`redact` replaces the value of every secret environment variable before text reaches a file or a log.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

import orjson

from loraexp.errors import UserError

log = logging.getLogger(__name__)
SECRET_ENV_VARS = ("TINKER_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")


def redact(text: str) -> str:
    """Replace the value of every secret environment variable in `text` by ***."""
    for name in SECRET_ENV_VARS:
        value = os.environ.get(name)
        if value:
            text = text.replace(value, "***")
    return text


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
