"""The offline demo's base model "loraexp/tiny-qwen3-demo": a tiny Qwen3, briefly pretrained on the demo task.

Why pretraining exists: LoRA on a randomly initialised base cannot learn the demo task within a CPU budget. The
frozen, tied, random lm_head (std 0.02) caps the logits near +/-3, so the loss sticks at ~3.1 and accuracy stays
at 0-6% whatever the LR, rank or step count (shared/reference/local-demo-feasibility.md §3). A real base model
already knows arithmetic and the chat format; the demo imitates that with a short, deterministic full
pretraining on the demo generator's clean examples, stopped early (by step count, never by a benchmark) so the
base answers only some of the benchmark and LoRA fine-tuning has room to show an effect.

Recipe (hashed into the cache dir name, so a changed recipe or tokenizer builds a new model):
Qwen3ForCausalLM, hidden 128, 4 layers, 4 heads of 32, 2 KV heads, MLP 384, tied embeddings, rope theta 1e4,
vocab = the demo tokenizer; AdamW, warmup + cosine; loss on the answer span through `<|im_end|>`; the system prompt on
half of the examples (chosen by a hash of the question, so it carries no information about the answer).
Built once (~2 min on 2 cores) under `<cache_root>/models/tiny-qwen3-demo-<hash>/`, atomically.
"""

from __future__ import annotations

import hashlib
import logging
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import orjson

from loraexp.chat import BatchRenderer, stop_token_id
from loraexp.demo.data import clean_examples
from loraexp.demo.tokenizer import DEMO_SYSTEM_PROMPT, demo_tokenizer_dir
from loraexp.files import file_sha256
from loraexp.local_tinker.numerics import warm_up_vector_math
from loraexp.tokenization import RECIPE_FILE, load_tokenizer
from loraexp.training.schedule import LrSchedule

log = logging.getLogger(__name__)

DEMO_BASE_MODEL = "loraexp/tiny-qwen3-demo"  # experiment.base_model of the offline demo


@dataclass(frozen=True)
class DemoBaseRecipe:
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4  # head_dim 32
    num_kv_heads: int = 2
    intermediate_size: int = 384
    rope_theta: float = 1e4
    max_positions: int = 512  # demo rows are under ~120 tokens; render.max_tokens is 512
    init_seed: int = 0  # weights and data order
    examples: int = 20_000  # clean (question, solution) pairs from loraexp.demo.data.clean_examples
    data_seed: int = 1  # seed of clean_examples; the demo's own rows use data.demo_seed (0)
    steps: int = 700  # the checkpoint is the last step (a step count, never a benchmark pick); 27% greedy on the demo benchmark
    batch_size: int = 32
    peak_lr: float = 3e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1


def recipe_hash(recipe: DemoBaseRecipe, tokenizer_sha256: str) -> str:
    payload = orjson.dumps({"recipe": asdict(recipe), "tokenizer_sha256": tokenizer_sha256, "version": 1}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(payload).hexdigest()[:12]


def ensure_demo_base(cache_root: Path, recipe: DemoBaseRecipe = DemoBaseRecipe()) -> Path:
    """The HF model dir of "loraexp/tiny-qwen3-demo" (config, safetensors, tokenizer), built on first use."""
    cache_root = Path(cache_root)
    tokenizer_dir = demo_tokenizer_dir(cache_root)
    tokenizer_sha = file_sha256(tokenizer_dir / "tokenizer.json")
    target = cache_root / "models" / f"tiny-qwen3-demo-{recipe_hash(recipe, tokenizer_sha)}"
    if (target / RECIPE_FILE).exists():
        return target
    tokenizer = load_tokenizer(str(tokenizer_dir), cache_root)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        log.info("building the demo base model %s: a one-time pretraining of %d steps (about 2 min on 2 cores), cached for every later run", target.name, recipe.steps)
        started = time.monotonic()
        model, losses = pretrain(recipe, tokenizer)
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        info = {"recipe": asdict(recipe), "tokenizer_sha256": tokenizer_sha, "build_seconds": round(time.monotonic() - started, 1),
                "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4)}
        (staging / RECIPE_FILE).write_bytes(orjson.dumps(info, option=orjson.OPT_INDENT_2))
        try:
            staging.rename(target)
        except OSError:  # another process finished the same build first
            if not (target / RECIPE_FILE).exists():
                raise
        log.info("demo base model ready in %s (%.0f s, final answer loss %.3f)", target, info["build_seconds"], info["final_loss"])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def new_model(recipe: DemoBaseRecipe, tokenizer):
    """A randomly initialised tiny Qwen3ForCausalLM whose vocabulary is exactly the demo tokenizer's."""
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    stop_id, pad_id = stop_token_id(tokenizer), tokenizer.pad_token_id
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=recipe.hidden_size, intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers, num_attention_heads=recipe.num_heads, num_key_value_heads=recipe.num_kv_heads,
        head_dim=recipe.hidden_size // recipe.num_heads, max_position_embeddings=recipe.max_positions,
        rope_theta=recipe.rope_theta, tie_word_embeddings=True, eos_token_id=stop_id, pad_token_id=pad_id, bos_token_id=None,
    )
    torch.manual_seed(recipe.init_seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=stop_id, pad_token_id=pad_id, do_sample=False)
    return model


def pretraining_rows(recipe: DemoBaseRecipe, tokenizer) -> list[tuple[list[int], int]]:
    """(tokens, prompt length) of every pretraining example; the system prompt on the half picked by a question hash."""
    pairs = clean_examples(recipe.examples, recipe.data_seed)
    with_system = [hashlib.sha256(question.encode("utf-8")).digest()[0] % 2 == 0 for question, _ in pairs]
    rendered: list[tuple[list[int], int] | None] = [None] * len(pairs)
    for system_prompt, wanted in ((DEMO_SYSTEM_PROMPT, True), ("", False)):
        indices = [index for index, flag in enumerate(with_system) if flag == wanted]
        outcomes = BatchRenderer(tokenizer, system_prompt).render([pairs[index] for index in indices])
        for index, outcome in zip(indices, outcomes):
            if isinstance(outcome, Exception):
                raise outcome
            rendered[index] = outcome
    return rendered  # type: ignore[return-value]


def _batch_tensors(rows: Sequence[tuple[list[int], int]], pad_id: int):
    """Right-padded input ids, attention mask and labels (-100 outside the answer span)."""
    import torch

    width = max(len(tokens) for tokens, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (tokens, prompt_len) in enumerate(rows):
        input_ids[row, : len(tokens)] = torch.tensor(tokens)
        labels[row, prompt_len : len(tokens)] = torch.tensor(tokens[prompt_len:])
        mask[row, : len(tokens)] = 1
    return input_ids, mask, labels


def lr_schedule(recipe: DemoBaseRecipe) -> LrSchedule:
    """Linear warmup, then cosine from peak to peak * min_lr_ratio at the last step: the same schedule as every training run."""
    return LrSchedule(recipe.peak_lr, recipe.warmup_steps, recipe.steps, recipe.min_lr_ratio)


def pretrain(recipe: DemoBaseRecipe, tokenizer, progress: bool = True):
    """Full pretraining of a fresh tiny model for `recipe.steps` steps; returns (model, per-step answer losses)."""
    import torch
    from tqdm import tqdm

    warm_up_vector_math()
    rows = pretraining_rows(recipe, tokenizer)
    model = new_model(recipe, tokenizer)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.peak_lr, betas=(0.9, 0.95), weight_decay=0.0)
    order_rng = random.Random(recipe.init_seed)
    order: list[int] = []
    losses = []
    schedule = lr_schedule(recipe)
    for step in tqdm(range(1, recipe.steps + 1), desc="pretraining the demo base (one-time)", disable=None if progress else True, mininterval=2.0):
        if len(order) < recipe.batch_size:  # a fresh permutation per pass over the examples
            fresh = list(range(len(rows)))
            order_rng.shuffle(fresh)
            order += fresh
        batch, order = [rows[index] for index in order[: recipe.batch_size]], order[recipe.batch_size :]
        input_ids, mask, labels = _batch_tensors(batch, tokenizer.pad_token_id)
        for group in optimizer.param_groups:
            group["lr"] = schedule.at(step)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return model, losses
