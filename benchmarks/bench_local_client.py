"""The local Tinker client against a plain PEFT + torch loop, on the default tiny model; run by hand.

    python benchmarks/bench_local_client.py [--steps 30] [--rounds 5]

1. Training step (forward_backward + optim_step, batch 8, 60-80 tokens, LoRA r8 attn+mlp) through
   LocalTrainingClient vs the same model, batch and AdamW in a plain loop; rounds alternate between
   the two so that machine noise hits both; reports median seconds per step and their ratio (target <= 1.1).
2. Greedy generation, 16 prompts x 64 new tokens: 16 concurrent sample() calls (batched by the
   sampler's worker) vs one prompt at a time; tokens per second.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import peft
import tinker
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM

from loraexp.datums import datum_from_row
from loraexp.local_tinker import LocalServiceClient

VOCAB, BATCH, RANK, LR = 1024, 8, 8, 1e-3
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def default_tiny_model(directory: Path) -> Path:
    """The demo base's shape (hidden 128, 4 layers, 4x32 heads, 2 KV heads, MLP 384, tied) with a 1,024-token vocab."""
    config = Qwen3Config(vocab_size=VOCAB, hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=32, max_position_embeddings=1024, tie_word_embeddings=True, eos_token_id=1, pad_token_id=0)
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(directory)
    return directory


def demo_rows(count: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        length = int(rng.integers(60, 81))
        prompt = int(rng.integers(30, 45))
        rows.append({"tokens": rng.integers(2, VOCAB, length).tolist(), "weights": [0] * prompt + [1] * (length - prompt)})
    return rows


def plain_loop(base_dir: Path, rows: list[dict]):
    """The reference: PEFT model, right-padded batch + attention mask, summed weighted CE, AdamW."""
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    torch.manual_seed(0)
    model = peft.get_peft_model(base, peft.LoraConfig(r=RANK, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS)).eval()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, betas=(0.9, 0.95), eps=1e-12, weight_decay=0.0)
    width = max(len(r["tokens"]) for r in rows) - 1
    input_ids = torch.zeros((len(rows), width), dtype=torch.long)
    targets = torch.zeros((len(rows), width), dtype=torch.long)
    weights = torch.zeros((len(rows), width))
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row["tokens"]) - 1
        input_ids[i, :n] = torch.tensor(row["tokens"][:-1])
        targets[i, :n] = torch.tensor(row["tokens"][1:])
        weights[i, :n] = torch.tensor(row["weights"][1:], dtype=torch.float32)
        mask[i, :n] = 1

    def step() -> float:
        logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
        loss = (F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none") * weights.flatten()).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def local_loop(service: LocalServiceClient, base_dir: Path, rows: list[dict]):
    client = service.create_lora_training_client(str(base_dir), rank=RANK, seed=0, train_mlp=True, train_attn=True, train_unembed=False).result()
    data = [datum_from_row(row) for row in rows]
    adam = tinker.AdamParams(learning_rate=LR)

    def step() -> float:
        forward_backward = client.forward_backward(data, "cross_entropy")
        optim = client.optim_step(adam)
        loss = forward_backward.result().metrics["loss:sum"]
        optim.result()
        return loss

    return step


def time_steps(step, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        step()
    return (time.perf_counter() - started) / count


def bench_training(service: LocalServiceClient, base_dir: Path, steps: int, rounds: int) -> dict:
    rows = demo_rows(BATCH)
    plain, local = plain_loop(base_dir, rows), local_loop(service, base_dir, rows)
    assert abs(plain() - local()) < 1e-2, "the two loops must compute the same loss"
    time_steps(plain, 3), time_steps(local, 3)  # warm-up
    plain_s, local_s = [], []
    for _ in range(rounds):
        plain_s.append(time_steps(plain, steps))
        local_s.append(time_steps(local, steps))
    ratios = [l / p for l, p in zip(local_s, plain_s)]
    return {"plain_s_per_step": statistics.median(plain_s), "local_s_per_step": statistics.median(local_s),
            "ratio_median": statistics.median(ratios), "ratios": ratios, "tokens_per_step": sum(len(r["tokens"]) - 1 for r in rows)}


def bench_generation(service: LocalServiceClient, base_dir: Path, prompts: int = 16, new_tokens: int = 64) -> dict:
    sampler = service.create_sampling_client(base_model=str(base_dir)).result()
    rng = np.random.default_rng(1)
    inputs = [tinker.ModelInput.from_ints(rng.integers(2, VOCAB, int(rng.integers(30, 50))).tolist()) for _ in range(prompts)]
    params = tinker.SamplingParams(max_tokens=new_tokens, temperature=0.0, stop=[])  # no stops: every prompt decodes 64 tokens
    sampler.sample(inputs[0], 1, params).result()  # warm-up

    started = time.perf_counter()
    one_by_one = [sampler.sample(prompt, 1, params).result() for prompt in inputs]
    sequential_s = time.perf_counter() - started
    started = time.perf_counter()
    futures = [sampler.sample(prompt, 1, params) for prompt in inputs]
    batched = [future.result() for future in futures]
    batched_s = time.perf_counter() - started
    assert [r.sequences[0].tokens for r in batched] == [r.sequences[0].tokens for r in one_by_one], "batching must not change greedy tokens"
    total = prompts * new_tokens
    return {"one_at_a_time_tok_s": total / sequential_s, "concurrent_16_tok_s": total / batched_s, "speedup": sequential_s / batched_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (plain, local)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = default_tiny_model(Path(tmp) / "tiny")
        service = LocalServiceClient(Path(tmp) / "local_tinker")
        training = bench_training(service, base_dir, args.steps, args.rounds)
        generation = bench_generation(service, base_dir)
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"training step, batch {BATCH} x ~{training['tokens_per_step'] // BATCH} tokens, LoRA r{RANK} attn+mlp:")
    print(f"  plain PEFT loop   {training['plain_s_per_step'] * 1000:.1f} ms/step")
    print(f"  local client      {training['local_s_per_step'] * 1000:.1f} ms/step")
    print(f"  ratio local/plain {training['ratio_median']:.3f} (rounds: {', '.join(f'{r:.3f}' for r in training['ratios'])})")
    print("greedy generation, 16 prompts x 64 new tokens:")
    print(f"  one at a time     {generation['one_at_a_time_tok_s']:.0f} tok/s")
    print(f"  16 concurrent     {generation['concurrent_16_tok_s']:.0f} tok/s ({generation['speedup']:.1f}x)")


if __name__ == "__main__":
    main()
