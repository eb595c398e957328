"""`loraexp run` end to end on a small contract: the whole DAG, a no-op second run, targeted reruns, failures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

from datakit import cli, results
from loraexp.cli import CliContext
from loraexp.pipeline import STAGE_NAMES
from pipeline_kit import small_config


def finished_at(tmp_path) -> dict[str, str]:
    return {p.parent.name: orjson.loads(p.read_bytes())["finished_at"] for p in results(tmp_path).glob("*/manifest.json")}


def test_run_whole_dag_then_noop_then_targeted_rerun(tmp_path, small_base):
    config = small_config(tmp_path, small_base)
    first = cli("run", "--config", config)
    for stage in STAGE_NAMES:
        assert f"▶ {stage}" in first.output
    runs = finished_at(tmp_path)
    expected = {"demo-build-data", "demo-audit", "demo-contamination", "demo-render", "demo-smoke", "demo-lr-select",
                "demo-export", "demo-eval-baseline", "demo-figures"}
    expected |= {f"demo-train-{c}-seed{s}" for c in ("attention_only", "all_layer") for s in (0, 1)}
    expected |= {f"demo-eval-{c}-seed{s}" for c in ("attention_only", "all_layer") for s in (0, 1)}
    assert expected <= set(runs)
    assert (results(tmp_path) / "demo-figures" / "report.md").exists()

    second = cli("run", "--config", config)
    assert "nothing to do" in second.output
    assert finished_at(tmp_path) == runs

    # audit has no dependents: deleting its manifest reruns audit alone
    (results(tmp_path) / "demo-audit" / "manifest.json").unlink()
    cli("run", "--config", config)
    after = finished_at(tmp_path)
    assert {run for run in after if after[run] != runs.get(run)} == {"demo-audit"}

    # export feeds eval, which feeds figures: those rerun, training does not
    (results(tmp_path) / "demo-export" / "manifest.json").unlink()
    before = finished_at(tmp_path)
    cli("run", "--config", config)
    changed = {run for run, stamp in finished_at(tmp_path).items() if stamp != before.get(run)}
    assert "demo-export" in changed and "demo-figures" in changed
    assert not any(run.startswith(("demo-train-", "demo-render", "demo-lr-select", "demo-build-data")) for run in changed)


def test_a_failing_stage_prints_its_rerun_command(tmp_path, small_base):
    config = small_config(tmp_path, small_base)
    cli("run", "--config", config, "--only", "build-data")
    (results(tmp_path) / "demo-build-data" / "train.jsonl").write_text("")  # tamper: contamination now sees a changed input
    (results(tmp_path) / "demo-build-data" / "manifest.json").unlink()
    broken = config.read_text().replace('source = "demo"\ndemo_rows = 700', 'source = "/no/such/file.jsonl"\ndemo_rows = 700', 1)
    config.write_text(broken)
    result = cli("run", "--config", config, expect=1)
    assert "stage build-data failed" in result.output
    assert f"rerun just this stage: loraexp build-data --config {config}" in result.output
    assert "Traceback" not in result.output


def test_unknown_stage_name_is_one_line(tmp_path, small_base):
    config = small_config(tmp_path, small_base)
    result = cli("run", "--config", config, "--only", "trian", expect=2)
    assert "unknown stage 'trian'" in result.output


def test_an_unexpected_exception_is_one_line_and_a_crash_log(tmp_path, small_base, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = small_config(tmp_path, small_base)

    def broken(contract):
        raise ZeroDivisionError("simulated bug")

    cli("build-data", "--config", config)
    cli("render", "--config", config)
    result = cli("smoke", "--config", config, expect=1, obj=CliContext(connect=broken))
    assert "Traceback" not in result.output
    line = next(line for line in result.output.splitlines() if line.startswith("error: unexpected ZeroDivisionError"))
    logs = list((tmp_path / "artifacts" / "logs").glob("crash-*.txt"))
    assert len(logs) == 1 and str(logs[0].relative_to(tmp_path)) in line
    assert "simulated bug" in logs[0].read_text() and "Traceback" in logs[0].read_text()


def test_a_failed_run_prints_one_error_line_and_its_rerun_command(tmp_path):
    """As a new user would try it: the reference contract offline stops at build-data (the Hub is unreachable)."""
    config = Path(__file__).resolve().parents[1] / "configs" / "lora-and-friends.toml"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "-m", "loraexp.cli", "run", "--config", str(config)], cwd=tmp_path, capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: stage build-data failed: could not load HF dataset 'nvidia/OpenMathInstruct-2'"), proc.stderr
    assert proc.stderr.splitlines()[-1] == f"  rerun just this stage: loraexp build-data --config {config}"
    assert "unexpected" not in proc.stderr and "Traceback" not in proc.stderr
