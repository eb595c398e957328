"""The smoke stage driven through the CLI on a fixture render run, and the thin real-SDK path, offline."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import orjson
import pytest
import tinker
from typer.testing import CliRunner

from loraexp.artifacts import open_run
from loraexp.files import write_jsonl
from loraexp.cli import app
from loraexp.contracts import load_contract
from loraexp.errors import UserError
from loraexp.local_tinker import LocalRestClient, LocalServiceClient
from loraexp.service import Service, connect
from loraexp.service.datums import datum_from_row
from loraexp.stages import smoke
from tiny_qwen3 import fixture_rows, make_tiny_qwen3

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.toml"


@pytest.fixture()
def config(tmp_path) -> Path:
    """configs/demo.toml pointed at a random tiny Qwen3 and a temp artifacts dir, with a finished render run."""
    base = make_tiny_qwen3(tmp_path / "tiny-qwen3")
    text = DEMO_CONFIG.read_text()
    text = re.sub(r'(?m)^base_model = .*$', f'base_model = "{base}"', text)
    text = re.sub(r'(?m)^artifacts_dir = .*$', f'artifacts_dir = "{tmp_path / "artifacts"}"', text)
    path = tmp_path / "smoke.toml"
    path.write_text(text)
    contract = load_contract(path)
    render = open_run(contract, "render", "demo-render")
    write_jsonl(render.path("train.jsonl"), fixture_rows(12, seed=1))
    write_jsonl(render.path("val.jsonl"), fixture_rows(6, seed=2))
    render.finish(["train.jsonl", "val.jsonl"])
    return path


def read(path: Path):
    return orjson.loads(path.read_bytes())


def test_smoke_cli_writes_both_conditions_with_backend_recorded_flags(config):
    result = CliRunner().invoke(app, ["smoke", "--config", str(config)])
    assert result.exit_code == 0, result.output
    run_dir = load_contract(config).experiment.artifacts_dir + "/results/demo-smoke"
    report = read(Path(run_dir) / "smoke.json")
    assert report["status"] == "pass" and report["backend"] == "local"
    assert report["versions"]["tinker"] == tinker.__version__ and report["versions"]["peft"]
    knobs = report["backend_owned_lora_knobs"]
    assert knobs["lora_alpha"] == 32 and knobs["lora_dropout"] == 0.0 and knobs["evidence"].startswith("measured")
    attention, all_layer = report["conditions"]["attention_only"], report["conditions"]["all_layer"]
    assert attention["flags_recorded_by_backend"] == {"train_attn": True, "train_mlp": False, "train_unembed": False}
    assert all_layer["flags_recorded_by_backend"] == {"train_attn": True, "train_mlp": True, "train_unembed": False}
    assert attention["accepted"] and all_layer["accepted"] and attention["lora_rank_recorded_by_backend"] == 8
    # measured from the downloaded adapters' tensors, not taken from the backend's word
    assert attention["adapter"]["kinds"] == ["attn"] and all_layer["adapter"]["kinds"] == ["attn", "mlp"]
    assert attention["adapter"]["modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"] and attention["adapter"]["ranks"] == [8]
    assert attention["adapter"]["untrained_kinds"] == [] and all_layer["adapter_deviations"] == []
    assert 0 < attention["trainable_parameters"]["count"] < all_layer["trainable_parameters"]["count"]
    assert attention["trainable_parameters"]["count"] == attention["adapter"]["parameters"]
    for condition in (attention, all_layer):
        assert condition["train_nll_decreased"] and len(condition["train_mean_nll"]) == smoke.SMOKE_STEPS
        assert 0 < condition["val_mean_nll_after"] < 10 and condition["val_loss_tokens"] > 0
    metrics = [orjson.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_bytes().splitlines()]
    assert [(m["condition"], m["step"]) for m in metrics] == [(c, s) for c in ("attention_only", "all_layer") for s in (1, 2, 3)]
    assert all({"progress", "learning_rate", "num_tokens", "num_loss_tokens"} <= m.keys() for m in metrics)
    manifest = read(Path(run_dir) / "manifest.json")
    adapters = {f"adapters/{c}/{f}" for c in ("attention_only", "all_layer") for f in ("adapter_config.json", "adapter_model.safetensors")}
    assert manifest["status"] == "pass" and set(manifest["outputs"]) == {"smoke.json", "metrics.jsonl"} | adapters
    assert "demo-render" in manifest["inputs"]


class Recorder:
    """Logs every call made on a client (and on the clients its futures resolve to)."""

    def __init__(self, inner, calls):
        self._inner, self.calls = inner, calls

    def __getattr__(self, name):
        attribute = getattr(self._inner, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            result = attribute(*args, **kwargs)
            if name.startswith("create_"):
                client = result.result()
                return type("Resolved", (), {"result": lambda _self: Recorder(client, self.calls)})()
            return result

        return call


def test_smoke_calls_the_tinker_surface_in_order_with_real_types(config):
    contract = load_contract(config)
    calls = []
    local = LocalServiceClient(Path(contract.experiment.artifacts_dir) / "local_tinker")
    service = Service(Recorder(local, calls), lambda: LocalRestClient(local.store), "local").tagged("smoke", "recorded")
    run = open_run(contract, "smoke", "recorded")
    smoke.smoke(contract, service, run, Path(contract.experiment.artifacts_dir) / "results" / "demo-render")
    names = [name for name, _, _ in calls if name != "get_info"]
    per_condition = (["create_lora_training_client", "forward"] + ["forward_backward", "optim_step"] * smoke.SMOKE_STEPS
                     + ["forward", "save_state", "save_weights_external"])
    assert names == per_condition * 2
    create = calls[0]
    assert create[2]["base_model"] == contract.experiment.base_model and create[2]["rank"] == 8 and create[2]["train_mlp"] is False
    assert create[2]["user_metadata"]["loraexp_run_id"] == "recorded" and create[2]["user_metadata"]["loraexp_stage"] == "smoke"
    assert create[2]["user_metadata"]["loraexp_condition"] == "attention_only" and "loraexp_git_commit" in create[2]["user_metadata"]
    forward_backward = next(args for name, args, _ in calls if name == "forward_backward")
    assert forward_backward[1] == "cross_entropy" and all(isinstance(d, tinker.Datum) for d in forward_backward[0])
    assert all(isinstance(d.loss_fn_inputs["weights"], tinker.TensorData) for d in forward_backward[0])
    adam = next(args[0] for name, args, _ in calls if name == "optim_step")
    assert isinstance(adam, tinker.AdamParams) and (adam.beta2, adam.eps, adam.learning_rate) == (0.95, 1e-12, 1e-3)
    assert next(kwargs for name, _, kwargs in calls if name == "save_state")["ttl_seconds"] == 3600


def test_datum_from_row_shifts_tokens_through_real_tinker_types():
    datum = datum_from_row({"row_id": "r", "tokens": [10, 11, 12, 13], "weights": [0, 0, 1, 1]})
    assert datum.model_input.to_ints() == [10, 11, 12]
    targets, weights = datum.loss_fn_inputs["target_tokens"], datum.loss_fn_inputs["weights"]
    assert (targets.dtype, weights.dtype) == ("int64", "float32")
    assert targets.tolist() == [11, 12, 13] and np.array_equal(weights.to_numpy(), [0, 1, 1])
    with pytest.raises(UserError, match="rerun `loraexp render`"):
        datum_from_row({"row_id": "short", "tokens": [1], "weights": [1]})


def test_tinker_backend_needs_a_key_before_anything_starts(config, monkeypatch):
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    config.write_text(config.read_text().replace('backend = "local"', 'backend = "tinker"'))
    result = CliRunner().invoke(app, ["smoke", "--config", str(config), "--override"])  # the render run was made under backend "local"
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: TINKER_API_KEY is not set: export TINKER_API_KEY=tml-... (from the Tinker console), or set experiment.backend = \"local\""]


def test_connect_hands_the_tinker_backend_to_the_real_sdk_constructors(config, monkeypatch):
    """Stand-ins for tinker.ServiceClient/RestClient (the real ones open network sessions) prove the pass-through."""
    made = []
    monkeypatch.setattr(tinker, "ServiceClient", lambda **kwargs: made.append(("service", kwargs)) or "service-client")
    monkeypatch.setattr(tinker, "RestClient", lambda **kwargs: made.append(("rest", kwargs)) or "rest-client")
    contract = load_contract(config).model_copy(update={"experiment": load_contract(config).experiment.model_copy(update={"backend": "tinker"})})
    monkeypatch.setenv("TINKER_API_KEY", "tml-test")
    service = connect(contract)
    assert service.client == "service-client" and service.backend == "tinker" and made == [("service", {})]  # the REST client waits for a use
    assert service.rest == "rest-client" and service.tagged("smoke", "x").rest == "rest-client"
    assert made == [("service", {}), ("rest", {})]  # one of each; the key travels by environment, never through our code
    monkeypatch.setenv("TINKER_API_KEY", "sk-wrong")
    with pytest.raises(UserError, match="must start with 'tml-'"):
        connect(contract)
