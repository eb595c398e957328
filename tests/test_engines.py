"""Trust no engine: the capability probe, adapter truth from the weights, TTLs, resume, determinism, sampler paths,
and an endpoint with nothing listening; each misbehaving engine is the local client with one thing changed (engines.py)."""

from __future__ import annotations

import time

import orjson
import pytest

from datakit import cli, error_line, results, set_key
from engines import IgnoresFlags, IgnoresTtl, LacksRestoreWithOptimizer, Nondeterministic, RefusesTtl, ShortSamplerPaths, engine_service
from loraexp.cli import CliContext
from loraexp.contracts import load_contract
from loraexp.local_tinker import LocalServiceClient
from loraexp.service import local_service
from loraexp.service.probe import NEEDS, probe_service


@pytest.fixture
def workdir(rendered_copy):
    """A private copy of the rendered small contract, as the current directory."""
    return rendered_copy


def engine(engine_class, workdir):
    return CliContext(connect=lambda contract: engine_service(engine_class, workdir / "engine"))


def test_the_local_client_passes_the_probe_and_it_is_cached(workdir):
    contract = load_contract(workdir / "demo.toml")
    service = local_service(LocalServiceClient(workdir / "svc"))
    first = probe_service(service, contract, fresh=True)
    assert first.calls == {call: "ok" for call in NEEDS} and first.warnings == [] and first.greedy_repeats is True
    assert first.endpoint == "in-process" and first.server == {"supported_models": []}
    again = probe_service(service, contract)  # within a day, same endpoint, conditions and SDK: no new calls
    assert again.checked_at == first.checked_at and again.key == first.key


def test_smoke_on_the_local_client_records_the_probe_and_the_measured_adapters(workdir):
    cli("smoke", "--config", workdir / "demo.toml")
    manifest = orjson.loads((results(workdir) / "demo-smoke" / "manifest.json").read_bytes())
    assert manifest["service"]["backend"] == "local" and manifest["service"]["endpoint"] == "in-process"
    assert manifest["service"]["sdk"]["tinker"] == "0.38.0" and manifest["service"]["probe"]["greedy_repeats"] is True
    report = orjson.loads((results(workdir) / "demo-smoke" / "smoke.json").read_bytes())
    for name, kinds in (("attention_only", ["attn"]), ("all_layer", ["attn", "mlp"])):
        adapter = report["conditions"][name]["adapter"]
        assert adapter["kinds"] == kinds and adapter["ranks"] == [8] and adapter["lora_alpha"] == 32 and adapter["lora_dropout"] == 0.0
        assert adapter["parameters"] > 0 and adapter["untrained_kinds"] == []
    status = cli("status", "--config", workdir / "demo.toml").output
    assert "attention_only=attn r8 alpha 32 dropout 0.0" in status


def test_an_engine_that_ignores_the_flags_is_refused_by_smoke_in_one_line(workdir):
    line = error_line(cli("smoke", "--config", workdir / "demo.toml", expect=2, obj=engine(IgnoresFlags, workdir)))
    assert "attention_only adapter: it adapts gate/up/down: the engine ignored train_mlp=False" in line
    assert "all_layer adapter" not in line and "no sweep was started" in line
    report = orjson.loads((results(workdir) / "demo-smoke" / "smoke.json").read_bytes())
    assert report["status"] == "fail" and report["conditions"]["attention_only"]["adapter"]["kinds"] == ["attn", "mlp"]
    assert not (results(workdir) / "demo-smoke" / "manifest.json").exists()


def test_an_engine_that_refuses_ttls_is_refused_before_any_paid_work(workdir):
    line = error_line(cli("smoke", "--config", workdir / "demo.toml", expect=2, obj=engine(RefusesTtl, workdir)))
    assert "lacks calls the pipeline needs, refused before any paid work" in line
    assert "save_state (smoke, lr-select, train: to save weights + optimizer state on the cadence (with a TTL)) failed with BadRequestError" in line
    assert not (results(workdir) / "demo-smoke" / "smoke.json").exists()


def test_an_engine_that_ignores_ttls_is_a_warning_recorded_in_the_manifest(workdir):
    result = cli("smoke", "--config", workdir / "demo.toml", obj=engine(IgnoresTtl, workdir))
    assert "the engine ignores checkpoint TTLs" in result.output
    warnings = orjson.loads((results(workdir) / "demo-smoke" / "manifest.json").read_bytes())["service"]["probe"]["warnings"]
    assert len(warnings) == 1 and "checkpoints never expire there" in warnings[0]


def test_an_engine_without_restore_with_optimizer_is_refused(workdir):
    line = error_line(cli("smoke", "--config", workdir / "demo.toml", expect=2, obj=engine(LacksRestoreWithOptimizer, workdir)))
    assert ("create_training_client_from_state_with_optimizer (lr-select, train: to resume an interrupted run exactly) failed with "
            "UnprocessableEntityError") in line


def test_an_endpoint_with_nothing_listening_fails_fast_naming_the_url(workdir, monkeypatch):
    monkeypatch.setenv("TINKER_API_KEY", "tml-dummy")
    config = workdir / "demo.toml"
    text = set_key(config.read_text(), "experiment", "backend", "tinker")
    config.write_text(set_key(text, "experiment", "base_url", "http://127.0.0.1:9"))
    started = time.monotonic()
    line = error_line(cli("smoke", "--config", config, "--override", expect=2))
    assert time.monotonic() - started < 30
    assert line.startswith("error: cannot reach the Tinker endpoint http://127.0.0.1:9 (") and "check experiment.base_url" in line


def test_eval_fails_above_the_determinism_threshold_and_records_the_count(workdir):
    config = workdir / "demo.toml"
    line = error_line(cli("eval", "--config", config, "--baseline-only", expect=2, obj=engine(Nondeterministic, workdir)))
    assert "greedy re-samples differ from the first pass (eval.max_determinism_mismatches = 0)" in line
    summary = orjson.loads((results(workdir) / "demo-eval-baseline" / "summary.json").read_bytes())
    assert summary["determinism"]["mismatches"] == summary["determinism"]["checked"] == 4
    assert not (results(workdir) / "demo-eval-baseline" / "manifest.json").exists()
    config.write_text(set_key(config.read_text(), "eval", "max_determinism_mismatches", 4))
    cli("eval", "--config", config, "--baseline-only", "--override", "--if-exists", "overwrite", obj=engine(Nondeterministic, workdir))
    manifest = orjson.loads((results(workdir) / "demo-eval-baseline" / "manifest.json").read_bytes())
    assert manifest["key_figure"]["determinism_mismatches"] == 4


def test_sampler_paths_are_used_as_the_engine_returns_them(workdir):
    contract = load_contract(workdir / "demo.toml")
    service = engine_service(ShortSamplerPaths, workdir / "engine")
    client = service.new_training_client(contract.experiment.base_model, 8, 0, contract.condition("all_layer"))
    path = client.save_weights_for_sampler("short").result().path
    assert "/sampler_weights/" not in path
    context = CliContext(connect=lambda c: service)
    cli("eval", "--config", workdir / "demo.toml", "--checkpoint", path, "--condition", "all_layer", "--seed", "0", "--limit", "2", obj=context)
    summary = orjson.loads((results(workdir) / "demo-eval-all_layer-seed0-probe2" / "summary.json").read_bytes())
    assert summary["sampler_path"] == path and summary["total"] == 2
