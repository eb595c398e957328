"""Loaders for the training source (OpenMathInstruct-2-shaped rows) and the benchmark (GSM8K-shaped rows).

Training source (`data.source`): an HF dataset id + `data.split`, a local `.parquet` or `.jsonl` file, or
"demo". The `problem_source` column is read first and text is materialised only for rows whose source is
in `data.keep_sources` (train_1M: 1M rows, 1.35 GB; ~29.5k original-source rows). Lines that cannot be
parsed (not UTF-8, not JSON, not an object) come back as rows carrying an `error`, so the gate can
quarantine them with their reason instead of dropping them or raising.

Row ids are `<dataset-or-file-stem>:<original index>` and stay stable across rebuilds: the manual
decisions file refers to them.

Benchmarks (`[[benchmarks]]` or `[benchmark]`): an HF id + config + split, a local `.jsonl`/`.parquet`, or
"demo", in gsm8k format (reference = text after the last `####`) or math format (reference = the answer
field). A row without a reference answer is refused with one line naming it, rather than silently
shrinking the benchmark (which would change every accuracy's denominator).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from loraexp.contracts import Benchmark, Contract
from loraexp.demo.data import generate_benchmark_rows, generate_math_benchmark_rows, generate_omi2_rows
from loraexp.errors import UserError
from loraexp.scoring.answers import gsm8k_reference

log = logging.getLogger(__name__)

TEXT_COLUMNS = ("problem", "generated_solution", "expected_answer")
LOCAL_SUFFIXES = (".jsonl", ".parquet")
PARQUET_BATCH_ROWS = 16_384  # text is decoded this many rows at a time: bounded memory on 1M-row files


@dataclass
class SourceRow:
    """One row of the training source that survived the problem_source filter (or could not be parsed)."""

    row_id: str
    row: dict | None  # the parsed row; None when the line could not be parsed
    error: str | None = None  # "malformed_json" | "not_utf8" | "not_an_object"
    raw: str | None = None  # the raw line, when it could not be parsed


@dataclass
class TrainingSource:
    name: str  # the row-id prefix, e.g. "omi2_sample" or "OpenMathInstruct-2-train_1M"
    rows_total: int  # every row in the source, before the problem_source filter
    source_counts: Counter = field(default_factory=Counter)  # problem_source -> rows, before the filter
    rows: list[SourceRow] = field(default_factory=list)


def training_source(contract: Contract) -> tuple[dict, Callable[[], TrainingSource]]:
    """`data.source` as (its fingerprint, a loader of its rows whose problem_source is in `data.keep_sources`).

    The fingerprint is what identifies the source beyond the contract: a local file's size and mtime (hashing 1.35 GB
    costs seconds), an HF dataset's resolved revision (a new upstream revision changes it), the generator's settings
    for "demo". A local path resolves like every path the contract names; an HF dataset is opened once for both.
    """
    data = contract.data
    keep = frozenset(data.keep_sources)
    named = {"source": data.source, "split": data.split}
    if data.source == "demo":
        return named, lambda: _from_dicts("demo", enumerate(generate_omi2_rows(data.demo_rows, data.demo_seed)), keep)
    path = contract.resolve_path(data.source)
    if path.suffix in LOCAL_SUFFIXES or path.is_file():
        if not path.is_file():
            return named, lambda: _load_file(path, keep)  # the loader says what is missing
        stat = path.stat()
        return {"path": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}, lambda: _load_file(path, keep)
    dataset = _hf_load(data.source, None, data.split)
    return {**named, **hf_identity(dataset)}, lambda: _load_hf(dataset, data.source, data.split, keep)


def _load_file(path: Path, keep: frozenset[str]) -> TrainingSource:
    if not path.is_file():
        raise UserError(f"data.source file not found: {path} (give an existing .jsonl/.parquet path, an HF dataset id, or \"demo\")")
    if path.suffix == ".jsonl":
        return _from_dicts(path.stem, _parse_jsonl(path), keep)
    if path.suffix == ".parquet":
        return _load_parquet(path, keep)
    raise UserError(f"data.source {path}: unsupported file type {path.suffix!r}; use .jsonl or .parquet")


def _parse_jsonl(path: Path) -> Iterator[tuple[int, dict | SourceRow]]:
    """(line index, parsed object) or (line index, SourceRow with the error) for every non-blank line."""
    with path.open("rb") as handle:
        for index, line in enumerate(handle):
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                yield index, SourceRow("", None, "not_utf8", line.decode("utf-8", "backslashreplace").rstrip("\n"))
                continue
            try:
                obj = orjson.loads(text)
            except orjson.JSONDecodeError:
                yield index, SourceRow("", None, "malformed_json", text.rstrip("\n"))
                continue
            if not isinstance(obj, dict):
                yield index, SourceRow("", None, "not_an_object", text.rstrip("\n"))
                continue
            yield index, obj


def _from_dicts(name: str, indexed: Iterable[tuple[int, dict | SourceRow]], keep: frozenset[str]) -> TrainingSource:
    """Filter parsed rows on problem_source; keep unparseable rows and rows without a usable source for the gate."""
    source = TrainingSource(name=name, rows_total=0)
    for index, obj in tqdm(indexed, desc=f"read {name}", unit="row", disable=None):
        source.rows_total += 1
        row_id = f"{name}:{index}"
        if isinstance(obj, SourceRow):
            obj.row_id = row_id
            source.source_counts["(unparseable)"] += 1
            source.rows.append(obj)
            continue
        problem_source = obj.get("problem_source")
        source.source_counts[problem_source if isinstance(problem_source, str) else "(missing)"] += 1
        if not isinstance(problem_source, str) or problem_source in keep:
            source.rows.append(SourceRow(row_id, obj))
    return source


def _kept_indices(problem_source: pa.ChunkedArray, keep: frozenset[str]) -> np.ndarray:
    """Indices of rows whose problem_source is kept or null (nulls go to the gate as missing fields)."""
    if not pa.types.is_string(problem_source.type) and not pa.types.is_large_string(problem_source.type):
        raise UserError(f"column problem_source has type {problem_source.type}, expected strings; is this an OpenMathInstruct-2-shaped source?")
    mask = pc.or_(pc.is_in(problem_source, value_set=pa.array(sorted(keep), problem_source.type)), pc.is_null(problem_source))
    return np.flatnonzero(mask.to_numpy(zero_copy_only=False))


def _count_sources(problem_source: pa.ChunkedArray) -> Counter:
    counts = Counter()
    for entry in pc.value_counts(problem_source).to_pylist():
        counts[entry["values"] if entry["values"] is not None else "(missing)"] += entry["counts"]
    return counts


def _load_parquet(path: Path, keep: frozenset[str]) -> TrainingSource:
    """problem_source column first; then text columns only for the row groups that hold kept rows."""
    parquet = pq.ParquetFile(path)
    names = parquet.schema_arrow.names
    if "problem_source" not in names:
        raise UserError(f"{path} has no problem_source column (columns: {', '.join(names)}); is this an OpenMathInstruct-2-shaped file?")
    problem_source = parquet.read(columns=["problem_source"]).column("problem_source")
    kept = _kept_indices(problem_source, keep)
    source = TrainingSource(path.stem, parquet.metadata.num_rows, _count_sources(problem_source))
    columns = [name for name in (*TEXT_COLUMNS, "problem_source") if name in names]
    group_start = 0
    for group in tqdm(range(parquet.num_row_groups), desc=f"read {path.name}", unit="row group", disable=None):
        group_rows = parquet.metadata.row_group(group).num_rows
        wanted = kept[(kept >= group_start) & (kept < group_start + group_rows)] - group_start
        if len(wanted):
            source.rows.extend(_take_from_row_group(parquet, group, columns, wanted, group_start, path.stem))
        group_start += group_rows
    return source


def _take_from_row_group(parquet: pq.ParquetFile, group: int, columns: list[str], wanted: np.ndarray, group_start: int, name: str) -> list[SourceRow]:
    """Decode one row group in bounded batches and keep only the `wanted` local row indices."""
    rows = []
    batch_start = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group], columns=columns):
        local = wanted[(wanted >= batch_start) & (wanted < batch_start + batch.num_rows)]
        if len(local):
            taken = batch.take(pa.array(local - batch_start))
            for offset, row in zip(local, taken.to_pylist()):
                rows.append(SourceRow(f"{name}:{group_start + int(offset)}", _drop_nulls(row)))
        batch_start += batch.num_rows
    return rows


def _drop_nulls(row: dict) -> dict:
    """A null cell is a missing field (how the gate reports it)."""
    return {key: value for key, value in row.items() if value is not None}


def _load_hf(dataset, dataset_id: str, split: str, keep: frozenset[str]) -> TrainingSource:
    """HF dataset: select the problem_source column first, then `.select()` the kept rows only."""
    if "problem_source" not in dataset.column_names:
        raise UserError(f"HF dataset {dataset_id} split {split} has no problem_source column; is this an OpenMathInstruct-2-shaped dataset?")
    problem_source = dataset.select_columns(["problem_source"]).with_format("arrow")[:]["problem_source"]
    kept = _kept_indices(problem_source, keep)
    name = f"{dataset_id.rsplit('/', 1)[-1]}-{split}"
    source = TrainingSource(name, len(dataset), _count_sources(problem_source))
    selected = dataset.select_columns([c for c in (*TEXT_COLUMNS, "problem_source") if c in dataset.column_names]).select(kept)
    for index, row in tqdm(zip(kept, selected), total=len(kept), desc=f"read {name}", unit="row", disable=None):
        source.rows.append(SourceRow(f"{name}:{int(index)}", _drop_nulls(row)))
    return source


def _hf_load(dataset_id: str, config: str | None, split: str):
    """datasets.load_dataset with any failure (offline, unknown id or split) turned into one line."""
    import datasets

    try:
        return datasets.load_dataset(dataset_id, config, split=split)
    except Exception as exc:  # noqa: BLE001 - network, auth, unknown id/config/split all end here
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(
            f"could not load HF dataset {dataset_id!r} (config {config!r}, split {split!r}): {type(exc).__name__}: {first_line[:200]}; "
            "check the id and split, the network / HF cache, or point the source at a local .jsonl/.parquet file"
        ) from None


def hf_identity(dataset) -> dict:
    """What identifies the HF dataset revision `load_dataset` resolved to: its fingerprint and cache folder.

    Both change when the upstream files change (a new revision on the Hub, or edited files of a local
    dataset dir), so a build made from another revision is redone instead of reused.
    """
    cache_files = dataset.cache_files
    return {"fingerprint": dataset._fingerprint, "revision_dir": Path(cache_files[0]["filename"]).parent.name if cache_files else None}


def load_benchmark(contract: Contract, benchmark: Benchmark) -> list[dict]:
    """Benchmark rows {index, question, answer, reference}. gsm8k format: reference = text after the last `####`;
    math format: reference = the answer field (LaTeX kept as written: fractions, radicals, intervals)."""
    origin = f"benchmark {benchmark.name} ({benchmark.source})"
    if benchmark.source == "demo":
        raw = generate_benchmark_rows(benchmark.demo_rows, benchmark.demo_seed) if benchmark.format == "gsm8k" else generate_math_benchmark_rows(benchmark.demo_rows, benchmark.demo_seed)
        return _benchmark_rows(raw, benchmark, origin)
    path = contract.resolve_path(benchmark.source)
    if path.suffix in LOCAL_SUFFIXES or path.is_file():
        if not path.is_file():
            raise UserError(f"{origin}: file not found: {path} (give an existing .jsonl/.parquet path, an HF dataset id, or \"demo\")")
        if path.suffix == ".parquet":
            return _benchmark_rows(pq.read_table(path).to_pylist(), benchmark, origin)
        if path.suffix != ".jsonl":
            raise UserError(f"{origin}: unsupported file type {path.suffix!r}; use .jsonl or .parquet")
        return _benchmark_rows(_read_benchmark_jsonl(path), benchmark, origin)
    dataset = _hf_load(benchmark.source, benchmark.config, benchmark.split)
    return _benchmark_rows(list(dataset), benchmark, f"{origin} split {benchmark.split}")


def _read_benchmark_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                raise UserError(f"{path}:{number} is not valid JSON; fix or remove that line of the benchmark file") from None
    return rows


def _benchmark_rows(raw_rows: list, benchmark: Benchmark, origin: str) -> list[dict]:
    """Every row with its reference answer; a row without one is refused (a silently smaller benchmark changes every denominator)."""
    question_key, answer_key = benchmark.question_key, benchmark.answer_key
    rows = []
    for index, raw in enumerate(raw_rows):
        if not isinstance(raw, dict) or not isinstance(raw.get(question_key), str) or not isinstance(raw.get(answer_key), str):
            raise UserError(f"{origin} row {index}: needs string fields {question_key!r} and {answer_key!r} ({benchmark.format} format); "
                            "fix that row or set question_field / answer_field")
        if benchmark.format == "gsm8k":
            reference = gsm8k_reference(raw[answer_key])
            if reference is None:
                raise UserError(f"{origin} row {index}: {answer_key} has no '#### N' line, so it has no reference; fix that row or remove it from the benchmark")
        else:
            reference = raw[answer_key].strip()
            if not reference:
                raise UserError(f"{origin} row {index}: empty {answer_key}, so it has no reference; fix that row or remove it from the benchmark")
        rows.append({"index": index, "question": raw[question_key], "answer": raw[answer_key], "reference": reference})
    if not rows:
        raise UserError(f"{origin} has no rows; point its source at a non-empty benchmark")
    return rows
