"""Helpers for the data-stage tests: a tmp copy of configs/demo.toml, the CLI runner, real-data converters."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import orjson
from typer.testing import CliRunner

from loraexp.scoring.answers import gsm8k_reference
from loraexp.cli import app

REPO = Path(__file__).resolve().parents[1]
# small cuts of real public GSM8K, MATH and OpenMathInstruct-2 rows (provenance and licenses in fixtures/README.md)
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def toml_value(value: object) -> str:
    """JSON literals of strings, numbers, booleans and lists of them are valid TOML."""
    return json.dumps(value)


def set_key(text: str, section: str, key: str, value: object) -> str:
    """Set `key` in `[section]` of a TOML text (replacing its line, or adding it under the header)."""
    header = re.search(rf"^\[{re.escape(section)}\]\s*$", text, re.MULTILINE)
    assert header, f"no [{section}] in the config"
    end = re.search(r"^\[", text[header.end():], re.MULTILINE)
    body_end = header.end() + (end.start() if end else len(text) - header.end())
    body = text[header.end():body_end]
    # a key's value may span lines (a list): replace up to the next key or blank line
    pattern = re.compile(rf"^{re.escape(key)}\s*=.*?(?=^\w+\s*=|^\s*$|\Z)", re.MULTILINE | re.DOTALL)
    line = f"{key} = {toml_value(value)}\n"
    body = pattern.sub(lambda _: line, body, count=1) if pattern.search(body) else "\n" + line + body.lstrip("\n")
    return text[:header.end()] + body + text[body_end:]


def dump_contract(raw: dict) -> str:
    """A contract's JSON form (model_dump(mode="json")) as TOML; None values are left out (TOML has no null)."""
    import tomli_w

    def without_none(value):
        if isinstance(value, dict):
            return {key: without_none(item) for key, item in value.items() if item is not None}
        return [without_none(item) for item in value] if isinstance(value, list) else value

    return tomli_w.dumps(without_none(raw))


def make_config(tmp_path: Path, data: dict | None = None, benchmark: dict | None = None, render: dict | None = None, name: str = "demo.toml") -> Path:
    """configs/demo.toml with artifacts under tmp_path, an empty decisions file there, and the given overrides."""
    decisions = tmp_path / "decisions.jsonl"
    if not decisions.exists():
        decisions.write_text("")
    text = (REPO / "configs" / "demo.toml").read_text(encoding="utf-8")
    text = set_key(text, "experiment", "artifacts_dir", str(tmp_path / "artifacts"))
    text = set_key(text, "data", "decisions_file", str(decisions))
    # the data-stage tests were written for both original sources (the demo keeps gsm8k only, see configs/demo.toml)
    data = {"keep_sources": ["gsm8k", "math"], **(data or {})}
    for section, overrides in (("data", data), ("benchmark", benchmark), ("render", render)):
        for key, value in (overrides or {}).items():
            text = set_key(text, section, key, value)
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def cli(*args: str | Path, expect: int = 0, obj: object = None):
    """Run the real `loraexp` CLI in-process; assert the exit code; return the result. `obj` is the app's
    CliContext (e.g. a `connect` that hands every stage a test's own service)."""
    # the CLI's logging.basicConfig binds the stderr of the first invocation; let each one bind its own
    for handler in logging.getLogger().handlers[:]:
        logging.getLogger().removeHandler(handler)
    result = CliRunner().invoke(app, [str(arg) for arg in args], obj=obj)
    assert result.exit_code == expect, f"exit {result.exit_code} != {expect}\n{result.output}\n{result.exception!r}"
    return result


def error_line(result) -> str:
    """The single `error: ...` line of a failed command (log lines may precede it; a traceback may not)."""
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


def results(tmp_path: Path) -> Path:
    return tmp_path / "artifacts" / "results"


def read_rows(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def write_rows(path: Path, rows: list) -> Path:
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    return path


def omi(problem: object, solution: object, answer: object, source: object = "gsm8k") -> dict:
    return {"problem": problem, "generated_solution": solution, "expected_answer": answer, "problem_source": source}


def gsm8k_as_omi(row: dict) -> dict:
    """A GSM8K row as an OpenMathInstruct-2 `gsm8k` row: the `#### N` line becomes `\\boxed{N}`."""
    reference = gsm8k_reference(row["answer"])
    worked = row["answer"].rsplit("####", 1)[0].rstrip()
    return omi(row["question"], f"{worked}\n\\boxed{{{reference}}}", reference, "gsm8k")


def math_as_omi(row: dict) -> dict:
    """A MATH train row as an OpenMathInstruct-2 `math` row (solution -> generated_solution, answer -> expected_answer)."""
    return omi(row["problem"], row["solution"], row["answer"], "math")
