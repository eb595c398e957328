"""The [local] runtime of the in-process client: dtype, attention kernel, gradient checkpointing, the memory plan,
and batched sampling under a token budget (tiny random Qwen3, CPU)."""

from __future__ import annotations

import math

import orjson
import pytest
import tinker
import torch

from datakit import cli, error_line, results, set_key
from loraexp.local_tinker import LocalServiceClient
from loraexp.local_tinker.model import Runtime
from loraexp.local_tinker.sampling import _Row, pack
from loraexp.service.datums import datum_from_row
from tiny_qwen3 import fixture_rows, make_tiny_qwen3

QWEN3_8B = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 4096, "num_hidden_layers": 36, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 12288, "vocab_size": 151936, "tie_word_embeddings": False,
            "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return make_tiny_qwen3(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def data():
    return [datum_from_row(row) for row in fixture_rows(4)]


def step(service, base_dir, data, **flags):
    client = service.create_lora_training_client(str(base_dir), rank=4, seed=0, **flags).result()
    output = client.forward_backward(data, "cross_entropy").result()
    client.optim_step(tinker.AdamParams(learning_rate=1e-3)).result()
    return client, output.metrics["loss:sum"]


def test_bfloat16_base_keeps_the_lora_weights_and_adamw_state_in_float32(tmp_path, base_dir, data):
    client, loss = step(LocalServiceClient(tmp_path / "svc", runtime=Runtime(dtype="bfloat16")), base_dir, data)
    assert math.isfinite(loss) and loss > 0
    model = client._model
    base = next(p for name, p in model.named_parameters() if name.endswith("q_proj.base_layer.weight"))
    lora = [p for p in model.parameters() if p.requires_grad]
    assert base.dtype == torch.bfloat16 and lora and all(p.dtype == torch.float32 for p in lora)
    state = client._optimizer.state
    assert state and all(s["exp_avg"].dtype == torch.float32 and s["exp_avg_sq"].dtype == torch.float32 for s in state.values())


def test_attention_kernel_and_gradient_checkpointing_reach_the_model(tmp_path, base_dir, data):
    plain, plain_loss = step(LocalServiceClient(tmp_path / "a", runtime=Runtime(attn_implementation="eager")), base_dir, data)
    assert plain._model.config._attn_implementation == "eager" and not plain._model.base_model.model.is_gradient_checkpointing
    checkpointed, loss = step(LocalServiceClient(tmp_path / "b", runtime=Runtime(attn_implementation="eager", gradient_checkpointing=True)), base_dir, data)
    assert checkpointed._model.base_model.model.is_gradient_checkpointing and checkpointed._model.training
    assert loss == pytest.approx(plain_loss, rel=1e-5)  # recomputation changes memory, not the numbers
    after = [o["logprobs"].to_numpy() for o in checkpointed.forward(data, "cross_entropy").result().loss_fn_outputs]
    before = [o["logprobs"].to_numpy() for o in plain.forward(data, "cross_entropy").result().loss_fn_outputs]
    assert all(abs(a - b).max() < 1e-4 for a, b in zip(after, before))  # the same step was taken


def test_batched_sampling_under_a_token_budget_equals_one_at_a_time(tmp_path, base_dir):
    prompts = [[5 + i, 9, 33 + i] * (1 + i % 3) for i in range(9)] + [[40, 41, 42, 43, 44, 45, 46]]
    params = tinker.SamplingParams(max_tokens=6, temperature=0.0, stop=[])
    service = LocalServiceClient(tmp_path / "svc", runtime=Runtime(sample_token_budget=40))  # at most ~2-3 rows per batch here
    sampler = service.create_sampling_client(base_model=str(base_dir)).result()
    together = [f.result().sequences[0].tokens for f in [sampler.sample(tinker.ModelInput.from_ints(p), 1, params) for p in prompts]]
    alone = [sampler.sample(tinker.ModelInput.from_ints(p), 1, params).result().sequences[0].tokens for p in prompts]
    assert together == alone


def test_packing_sorts_by_prompt_length_and_respects_the_budget():
    rows = [_Row(prompt=[1] * length, max_tokens=10, stop_ids=frozenset(), stop_strings=(), temperature=0.0, top_k=-1, top_p=1.0, generator=None)
            for length in (30, 5, 12, 5, 70)]
    batches = pack(rows, token_budget=60)
    assert [[len(r.prompt) for r in batch] for batch in batches] == [[5, 5], [12], [30], [70]]  # 70 + 10 > 60: alone
    assert all(len(batch) * (max(len(r.prompt) for r in batch) + 10) <= 60 for batch in batches[:-1])


def test_the_memory_plan_refuses_a_contract_that_cannot_fit_before_loading(rendered_copy, tmp_path):
    workdir = rendered_copy
    model = tmp_path / "qwen3-8b-config-only"  # the real Qwen3-8B shape, no weights: a plan needs only the config
    model.mkdir()
    (model / "config.json").write_bytes(orjson.dumps(QWEN3_8B))
    config = workdir / "demo.toml"
    text = set_key(config.read_text(), "experiment", "base_model", str(model))
    config.write_text(text + '\n[local]\ndtype = "float32"\ndevice = "cpu"\n')
    line = error_line(cli("smoke", "--config", config, "--override", expect=2))
    assert line.startswith("error: memory plan: a training step of 32 rows x ") and "on cpu in float32 (weights 30.5" in line
    assert "lower train.batch_size, set local.gradient_checkpointing = true" in line and "gradient checkpointing would need ~" in line
    assert not (results(workdir) / "demo-smoke" / "smoke.json").exists()


def test_the_local_section_is_recorded_in_the_manifest(rendered_copy):
    workdir = rendered_copy
    config = workdir / "demo.toml"
    config.write_text(config.read_text() + '\n[local]\ndtype = "float32"\nattn_implementation = "eager"\n')
    cli("smoke", "--config", config, "--override")
    manifest = orjson.loads((results(workdir) / "demo-smoke" / "manifest.json").read_bytes())
    assert manifest["service"]["local"]["attn_implementation"] == "eager" and manifest["service"]["memory_plan"]["dtype"] == "float32"
    assert manifest["service"]["memory_plan"]["total"] < manifest["service"]["memory_plan"]["available"]


def test_the_memory_plan_reads_the_render_run_the_stage_was_given(rendered_copy):
    workdir = rendered_copy
    (results(workdir) / "demo-render").rename(results(workdir) / "demo-render-other")  # no render run at the default id
    stats = orjson.loads((results(workdir) / "demo-render-other" / "stats.json").read_bytes())
    cli("smoke", "--config", workdir / "demo.toml", "--render-run", "demo-render-other", "--override")
    plan = orjson.loads((results(workdir) / "demo-smoke" / "manifest.json").read_bytes())["service"]["memory_plan"]
    assert f"x {int(stats['splits']['train']['tokens']['p95'])} tokens (the render run's p95)" in plan["what"]
