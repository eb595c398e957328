"""The render stage driven through the CLI on a small demo build-data run; assertions on the artifacts it writes."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from loraexp.files import read_jsonl
from loraexp.cli import app
from loraexp.contracts import load_contract
from loraexp.tokenization import load_saved_tokenizer
from loraexp.chat import render_example

REPO = Path(__file__).resolve().parents[1]
MAX_TOKENS = 90  # demo rows are ~70-115 tokens, so some are quarantined


def write_config(directory: Path, max_tokens: int = MAX_TOKENS) -> Path:
    text = (REPO / "configs" / "demo.toml").read_text(encoding="utf-8")
    text = re.sub(r'artifacts_dir = ".*"', f'artifacts_dir = "{directory / "artifacts"}"', text)
    text = re.sub(r"demo_rows = 4000", "demo_rows = 400", text)
    text = re.sub(r'decisions_file = ".*"\n', "", text)
    text = re.sub(r"max_tokens = \d+", f"max_tokens = {max_tokens}", text)
    path = directory / "demo-small.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    directory = tmp_path_factory.mktemp("render")
    config = write_config(directory)
    runner = CliRunner()
    built = runner.invoke(app, ["build-data", "--config", str(config)])
    assert built.exit_code == 0, built.output
    result = runner.invoke(app, ["render", "--config", str(config)])
    assert result.exit_code == 0, result.output
    contract = load_contract(config)
    results = Path(contract.experiment.artifacts_dir) / "results"
    return contract, results / "demo-build-data", results / "demo-render", config


def test_rows_tokens_and_weights(rendered):
    contract, data_dir, render_dir, _ = rendered
    tokenizer = load_saved_tokenizer(render_dir)
    for name in ("train.jsonl", "val.jsonl"):
        raw = {row["row_id"]: row for row in read_jsonl(data_dir / name)}
        rows = read_jsonl(render_dir / name)
        assert rows and set(rows[0]) == {"row_id", "problem_source", "tokens", "weights", "prompt_tokens", "answer_tokens"}
        for row in rows[:25]:
            source = raw[row["row_id"]]
            tokens, weights = render_example(tokenizer, contract.render.system_prompt, source["problem"], source["generated_solution"])
            assert (row["tokens"], row["weights"]) == (tokens, weights)
            assert row["prompt_tokens"] == weights.count(0) and row["answer_tokens"] == weights.count(1)
            assert tokenizer.decode(tokens[row["prompt_tokens"]:]) == source["generated_solution"] + "<|im_end|>"


def test_long_rows_quarantined_not_truncated(rendered):
    _, data_dir, render_dir, _ = rendered
    rejects = read_jsonl(render_dir / "rejects.jsonl")
    assert rejects and {r["reason"] for r in rejects} == {"too_long"}
    assert all(r["tokens"] > MAX_TOKENS and "render.max_tokens" in r["detail"] for r in rejects)
    for name, split in (("train.jsonl", "train"), ("val.jsonl", "val")):
        kept = read_jsonl(render_dir / name)
        assert all(len(row["tokens"]) <= MAX_TOKENS for row in kept)
        raw_ids = [row["row_id"] for row in read_jsonl(data_dir / name)]
        rejected_ids = [r["row_id"] for r in rejects if r["split"] == split]
        assert sorted([row["row_id"] for row in kept] + rejected_ids) == sorted(raw_ids)


def test_stats_budget_and_sample(rendered):
    contract, _, render_dir, _ = rendered
    stats = orjson.loads((render_dir / "stats.json").read_bytes())
    train = read_jsonl(render_dir / "train.jsonl")
    lengths = sorted(len(row["tokens"]) for row in train)
    assert stats["splits"]["train"]["rows"] == len(train) and stats["splits"]["train"]["tokens"]["max"] == lengths[-1]
    assert stats["splits"]["train"]["tokens"]["total"] == sum(lengths)
    assert stats["system_prompt_tokens"] > 0
    without = stats["splits"]["train"]["tokens_without_system_prompt"]
    assert without["total"] == sum(lengths) - len(lengths) * stats["system_prompt_tokens"]
    budget = orjson.loads((render_dir / "budget.json").read_bytes())
    per_epoch = sum(n - 1 for n in lengths)
    assert budget["training"]["tokens_per_epoch"] == per_epoch
    assert budget["training"]["usd_per_epoch"] == round(per_epoch * contract.prices.train_per_million / 1e6, 4)
    assert budget["training"]["runs"] == len(contract.lora.conditions) * len(contract.train.seeds)
    assert budget["lr_select"]["grid_points"] == len(contract.lora.conditions) * len(contract.lr_select.lr_grid)
    assert budget["eval"]["models"] == 7
    assert {name: part["questions"] for name, part in budget["eval"]["benchmarks"].items()} == {spec.name: spec.demo_rows for spec in contract.benchmark_specs}
    sample = (render_dir / "sample_render.txt").read_text(encoding="utf-8")
    assert sample.count("----- weight 0: prompt -----") == 2 and "<|im_end|>" in sample


def test_manifest_tokenizer_and_hub_dataset(rendered):
    _, _, render_dir, _ = rendered
    manifest = orjson.loads((render_dir / "manifest.json").read_bytes())
    assert manifest["status"] == "pass" and manifest["key_figure"]["train_rows"] == len(read_jsonl(render_dir / "train.jsonl"))
    assert "tokenizer/tokenizer.json" in manifest["outputs"] and "hub_dataset/SHA256SUMS" in manifest["outputs"]
    hub = render_dir / "hub_dataset"
    sums = (hub / "SHA256SUMS").read_text().splitlines()
    assert {line.split("  ")[1] for line in sums} == {"README.md", "raw/train.jsonl", "raw/validation.jsonl", "rendered/train.jsonl",
                                                      "rendered/validation.jsonl", "manifests/build-data.json", "manifests/render-stats.json",
                                                      "manifests/render-budget.json"}
    for line in sums:
        digest, name = line.split("  ")
        assert hashlib.sha256((hub / name).read_bytes()).hexdigest() == digest
    card = (hub / "README.md").read_text(encoding="utf-8")
    assert "license: cc-by-4.0" in card and f"| train | {manifest['key_figure']['train_rows']:,} |" in card


def test_push_without_token_is_one_line(rendered, monkeypatch):
    _, _, render_dir, config = rendered
    monkeypatch.delenv("HF_TOKEN", raising=False)
    result = CliRunner().invoke(app, ["render", "--config", str(config), "--run-id", "demo-render-push", "--push-to-hub", "me/data"])
    assert result.exit_code == 2 and "HF_TOKEN" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (render_dir.parent / "demo-render-push").exists()  # refused before any run dir is opened
