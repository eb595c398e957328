"""What the benchmark scripts share: where they write, which real text they read, contracts derived through the
contract model (never by editing TOML text), and the JSON result lines they print.

- Every script takes `--out DIR` (default artifacts/bench, git-ignored) and writes nothing outside it, and
  `--tiny`: the same code path at a size that runs in seconds on CPU, reading the real-data cuts in
  tests/fixtures instead of ../shared/data (tests/test_benchmarks.py runs every script that way).
- `derive_contract(base, {section: {key: value}})` loads a shipped contract with `load_contract`, replaces only the
  given keys in `model_dump(mode="json")`, and validates the result with `Contract.model_validate`;
  `write_contract` writes the TOML the CLI reads (tomli-w) and checks that it loads back to the same SHA-256.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from loraexp.contracts import Contract, load_contract

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # real GSM8K / MATH beside the checkout (full sizes only)
FIXTURES = REPO / "tests" / "fixtures"  # small cuts of the same files, committed (tiny sizes)
DEFAULT_OUT = REPO / "artifacts" / "bench"
REFERENCE_CONFIG = REPO / "configs" / "lora-and-friends.toml"
DEMO_CONFIG = REPO / "configs" / "demo.toml"


# ---------------------------------------------------------------------------------------------------------
# command line and output


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory everything is written under (default: artifacts/bench)")
    parser.add_argument("--tiny", action="store_true", help="the same code path at a size that runs in seconds (tests/test_benchmarks.py)")


def out_dir(args: argparse.Namespace, *parts: str) -> Path:
    """`--out` (absolute), or a folder under it, created."""
    path = args.out.expanduser().resolve().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def emit(name: str, result: dict[str, Any]) -> None:
    """One JSON result line: {"<name>": {...}} (parsed by tests/test_benchmarks.py)."""
    print(json.dumps({name: result}, default=_plain), flush=True)


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


# ---------------------------------------------------------------------------------------------------------
# real text


@dataclass(frozen=True)
class RealData:
    gsm8k_train: Path  # {"question", "answer" ending in "#### N"}
    gsm8k_test: Path
    math_train: Path  # {"problem", "solution", "answer"}
    origin: str


def real_data(tiny: bool) -> RealData:
    """The real GSM8K / MATH files: ../shared/data at full size, the committed tests/fixtures cuts at tiny size."""
    if tiny:
        data = RealData(FIXTURES / "gsm8k_train.jsonl", FIXTURES / "gsm8k_test.jsonl", FIXTURES / "math_train.jsonl", "tests/fixtures")
    else:
        data = RealData(SHARED_DATA / "gsm8k" / "train.jsonl", SHARED_DATA / "gsm8k" / "test.jsonl", SHARED_DATA / "math" / "train.jsonl", str(SHARED_DATA))
    missing = [str(path) for path in (data.gsm8k_train, data.gsm8k_test, data.math_train) if not path.is_file()]
    if missing:
        raise SystemExit(f"missing real data {', '.join(missing)}; the full size reads ../shared/data beside the checkout (or run with --tiny)")
    return data


# ---------------------------------------------------------------------------------------------------------
# contracts


def derive_contract(base: Path, edits: dict[str, dict[str, Any]]) -> Contract:
    """`base` (a shipped contract) with only the keys in `edits` replaced, validated by the contract model."""
    dumped = load_contract(base).model_dump(mode="json")
    for section, values in edits.items():
        unknown = sorted(set(values) - set(dumped[section]))
        if unknown:
            raise SystemExit(f"{base}: [{section}] has no key {unknown[0]!r}; update the benchmark")
        dumped[section] = {**dumped[section], **values}
    return Contract.model_validate(dumped)


def write_contract(contract: Contract, path: Path) -> Path:
    """The TOML file the CLI reads (tomli-w; None values left out, as TOML has no null); it must load back to the same SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(contract.model_dump(mode="json", exclude_none=True)), encoding="utf-8")
    loaded = load_contract(path)
    if loaded.sha256 != contract.sha256:
        raise SystemExit(f"{path} loads to contract {loaded.sha256[:12]}, not {contract.sha256[:12]}: a None field has a non-None default")
    return path
