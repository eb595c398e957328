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


# Contracts are a promise to users with runs in flight: these hashes were recorded before loraexp 0.2 added per-condition
# ranks and learning rates, [[benchmarks]], base_url, [local], determinism thresholds and declared comparisons.
PINNED = {"configs/lora-and-friends.toml": "6a8a59cd5bcd1c79414b00ba424bb926c75c96a18053df08ce2f586b2fb9bc4f",
          "configs/demo.toml": "ef3b9ac75c5314c5b4f1c4d3c99fe02c558ba6d076ecba58e56751e8efc52504"}


@pytest.mark.parametrize("path", sorted(PINNED))
def test_existing_contracts_keep_their_sha256(path):
    assert load_contract(path).sha256 == PINNED[path]


def test_new_fields_written_at_their_default_stay_out_of_the_hash(tmp_path):
    text = Path("configs/lora-and-friends.toml").read_text(encoding="utf-8")
    text = text.replace("[eval]\n", "[eval]\nmax_determinism_mismatches = 0\n").replace('base_model = "Qwen/Qwen3-8B"', 'base_model = "Qwen/Qwen3-8B"\nbase_url = "http://my-engine:8000"')
    path = tmp_path / "c.toml"
    path.write_text(text.replace('base_url = "http://my-engine:8000"\n', ""), encoding="utf-8")
    assert load_contract(path).sha256 == PINNED["configs/lora-and-friends.toml"]
    path.write_text(text, encoding="utf-8")
    assert load_contract(path).sha256 != PINNED["configs/lora-and-friends.toml"]  # a set field is part of the contract


def test_the_followup_contract_holds_the_follow_up_design():
    from tinker_cookbook.hyperparam_utils import get_lora_param_count

    c = load_contract("configs/lora-and-friends-followup.toml")
    reference = load_contract("configs/lora-and-friends.toml")
    assert (c.data, c.train, c.render, c.lr_select, c.eval) == (reference.data, reference.train, reference.render, reference.lr_select, reference.eval)
    ranks = {x.name: c.rank_of(x) for x in c.lora.conditions}
    assert ranks == {"attention_only": 8, "all_layer": 8, "attention_matched": 23}
    all_layer_r8 = get_lora_param_count("Qwen/Qwen3-8B", 8, train_mlp=True, train_attn=True, train_unembed=False)
    closest = min(range(1, 64), key=lambda r: abs(get_lora_param_count("Qwen/Qwen3-8B", r, train_mlp=False, train_attn=True, train_unembed=False) - all_layer_r8))
    assert all_layer_r8 == 21_823_488 and closest == ranks["attention_matched"]
    gsm8k, math500 = c.benchmark_specs
    assert (gsm8k.name, gsm8k.source, gsm8k.config, gsm8k.format, gsm8k.primary, gsm8k.checked_sources) == ("gsm8k", "openai/gsm8k", "main", "gsm8k", True, ("gsm8k",))
    assert (math500.source, math500.split, math500.format, math500.question_key, math500.answer_key, math500.checked_sources) == (
        "HuggingFaceH4/MATH-500", "test", "math", "problem", "answer", ("math",))
    assert c.comparisons == (("attention_only", "all_layer"), ("attention_matched", "all_layer"), ("attention_only", "attention_matched"))


def test_the_followup_demo_has_the_same_shape_offline():
    c = load_contract("configs/demo-followup.toml")
    assert [x.name for x in c.lora.conditions] == ["attention_only", "all_layer", "attention_matched"]
    assert [(b.name, b.format, b.primary) for b in c.benchmark_specs] == [("words", "gsm8k", True), ("rephrased", "math", False)]
    assert c.experiment.backend == "local" and c.rank_of(c.condition("attention_matched")) == 22


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t + '\n[[benchmarks]]\nname = "x"\nsource = "demo"\nformat = "gsm8k"\n', "either [benchmark]"),
    (lambda t: t.replace("primary = true", "primary = false"), "mark exactly one of the benchmarks"),
    (lambda t: t.replace('["attention_only", "all_layer"], ["attention_matched"', '["attention_only", "mlp_only"], ["attention_matched"'), "must name two different conditions"),
    (lambda t: t.replace('name = "attention_matched"', 'name = "attention matched"'), "should match pattern"),
    (lambda t: t.replace("[contamination]\n", '[contamination]\nbenchmark_sources = ["math"]\n'), "contamination_sources on each benchmark"),
], ids=["both-benchmark-kinds", "no-primary", "unknown-comparison", "bad-name", "legacy-sources"])
def test_contract_mistakes_are_one_line(tmp_path, edit, message):
    from loraexp.errors import UserError

    text = Path("configs/demo-followup.toml").read_text(encoding="utf-8")
    if "either [benchmark]" in message:
        text = Path("configs/demo.toml").read_text(encoding="utf-8")
    path = tmp_path / "c.toml"
    path.write_text(edit(text), encoding="utf-8")
    with pytest.raises(UserError, match=message.replace("[", r"\[")):
        load_contract(path)
