"""The demo contract ships inside the package: a wheel carries it, and `loraexp run` on it works from any directory."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import orjson

from datakit import cli
from loraexp.pipeline import packaged_demo_config

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_carries_the_demo_contract_and_its_decisions_file(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("loraexp-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"loraexp/resources/configs/demo.toml", "loraexp/resources/configs/decisions/demo.jsonl",
            "loraexp/resources/qwen3_chat_template.jinja"} <= names


def test_the_packaged_demo_runs_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here: the decisions file is found beside the packaged contract
    config = packaged_demo_config()
    assert config.is_file() and (config.parent / "decisions" / "demo.jsonl").is_file()
    assert (REPO / "configs" / "demo.toml").read_bytes() == config.read_bytes()  # the checkout's configs/demo.toml links to it
    cli("run", "--config", config, "--only", "build-data")
    manifest = orjson.loads((tmp_path / "artifacts" / "results" / "demo-build-data" / "manifest.json").read_bytes())
    assert manifest["decisions_file"] == "configs/decisions/demo.jsonl" and manifest["decisions_sha256"]
