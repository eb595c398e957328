"""Every file in configs/ loads, says in its header how to run it, and encodes the reference numbers."""

from pathlib import Path

import pytest

from loraexp.contracts import load_contract

CONFIGS = sorted(Path("configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_its_header_gives_the_command(path):
    contract = load_contract(path)
    header = [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#")][:12]
    assert any("loraexp " in line for line in header), f"{path}: the header must give the command that runs it"
    assert len(contract.sha256) == 64


def test_reference_contract_holds_the_design_numbers():
    c = load_contract("configs/lora-and-friends.toml")
    assert (c.experiment.backend, c.experiment.base_model, c.lora.rank) == ("tinker", "Qwen/Qwen3-8B", 8)
    flags = {x.name: (x.train_attn, x.train_mlp, x.train_unembed) for x in c.lora.conditions}
    assert flags == {"attention_only": (True, False, False), "all_layer": (True, True, False)}
    assert (c.data.source, c.data.split, c.data.keep_sources) == ("nvidia/OpenMathInstruct-2", "train_1M", ("gsm8k", "math"))
    assert (c.benchmark.source, c.benchmark.config, c.benchmark.split) == ("openai/gsm8k", "main", "test")
    assert (c.train.epochs, c.train.batch_size, c.train.learning_rate, c.train.seeds) == (2, 8, 3e-4, (0, 1, 2))
    assert (c.train.adam.beta1, c.train.adam.beta2, c.train.adam.eps, c.train.adam.weight_decay, c.train.adam.grad_clip_norm) == (0.9, 0.95, 1e-12, 0.0, 0.0)
    assert (c.lr_select.train_rows, c.lr_select.val_rows, c.lr_select.seed, c.lr_select.lr_grid, c.lr_select.steps, c.lr_select.validate_at) == (512, 128, 7, (1e-4, 3e-4, 1e-3), 64, (32, 64))
    assert (c.eval.max_new_tokens, c.eval.temperature, c.eval.concurrency) == (512, 0.0, 16)
    assert c.render.system_prompt == "You are a careful math solver. Solve the problem step by step. Put the final answer in \\boxed{}."
    assert not c.render.enable_thinking
    assert c.decision.min_gap == 0.01
    assert (c.prices.train_per_million, c.prices.sample_per_million, c.prices.prefill_per_million) == (0.40, 0.40, 0.13)
