"""The demo base recipe: a tiny Qwen3 whose vocabulary is the demo tokenizer's, cached by recipe hash, atomically.

The full build (1,500 steps, about 2-4 min on 2 cores) is not run here; a 3-step build checks the recipe end to end.
"""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from loraexp.chat import stop_token_id
from loraexp.demo.base_model import DemoBaseRecipe, ensure_demo_base, lr_schedule, pretraining_rows
from loraexp.demo.tokenizer import DEMO_TOKENIZER
from loraexp.tokenization import load_tokenizer

FAST = replace(DemoBaseRecipe(), steps=3, examples=64, batch_size=4, warmup_steps=1)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return cache, ensure_demo_base(cache, FAST)


def test_recipe_builds_a_model_matching_the_tokenizer(built):
    cache, model_dir = built
    assert model_dir.parent == cache / "models" and model_dir.name.startswith("tiny-qwen3-demo-")
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", "loraexp_recipe.json"} <= {p.name for p in model_dir.iterdir()}
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    config = model.config
    assert config.vocab_size == len(tokenizer) == len(load_tokenizer(DEMO_TOKENIZER, cache))
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads, config.head_dim,
            config.intermediate_size, config.tie_word_embeddings) == (128, 4, 4, 2, 32, 384, True)
    assert model.generation_config.eos_token_id == stop_token_id(tokenizer) and model.generation_config.do_sample is False
    recipe = orjson.loads((model_dir / "loraexp_recipe.json").read_bytes())
    assert recipe["recipe"]["steps"] == 3 and recipe["final_loss"] > 0


def test_cached_build_is_reused_and_recipe_changes_rebuild(built, tmp_path):
    cache, model_dir = built
    stamp = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert ensure_demo_base(cache, FAST) == model_dir
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == stamp
    other = ensure_demo_base(cache, replace(FAST, steps=2))
    assert other != model_dir and not [p for p in (cache / "models").iterdir() if p.name.startswith(".")]  # no staging left


def test_same_recipe_same_weights(built, tmp_path):
    _, model_dir = built
    again = ensure_demo_base(tmp_path, FAST)
    assert (again / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()


def test_pretraining_rows_mask_the_prompt_and_mix_the_system_prompt(built):
    cache, _ = built
    tokenizer = load_tokenizer(DEMO_TOKENIZER, cache)
    rows = pretraining_rows(FAST, tokenizer)
    system_id = tokenizer.convert_tokens_to_ids("system")
    with_system = sum(system_id in tokens[:3] for tokens, _ in rows)
    assert 0.3 * len(rows) < with_system < 0.7 * len(rows)
    assert all(tokens[-1] == stop_token_id(tokenizer) and 0 < prompt < len(tokens) for tokens, prompt in rows)


def test_learning_rate_warmup_then_cosine_to_floor():
    recipe = DemoBaseRecipe()
    schedule = lr_schedule(recipe)
    assert schedule.at(1) == pytest.approx(recipe.peak_lr / recipe.warmup_steps)
    assert schedule.at(recipe.warmup_steps) == pytest.approx(recipe.peak_lr)
    assert schedule.at(recipe.steps) == pytest.approx(recipe.peak_lr * recipe.min_lr_ratio)
