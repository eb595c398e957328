"""The local Tinker client against a plain PEFT + torch loop, on the default tiny model; run by hand.

    python benchmarks/bench_local_client.py [--steps 10] [--rounds 20] [--gen-rounds 5] [--threads 1] [--out artifacts/bench]
    python benchmarks/bench_local_client.py --tiny     # 2 rounds x 2 steps, 4 prompts x 8 tokens (seconds)

Model: the demo base's shape and vocabulary (hidden 128, 4 layers, 4x32 heads, 2 KV heads, MLP 384, tied, the
demo tokenizer's 525 tokens), random init. Rows: real demo training rows (system prompt + question + answer,
~87 tokens, loss on the answer), rendered with the demo tokenizer.
1. Training step (forward_backward + optim_step, batch 8, LoRA r8 attn+mlp) through LocalTrainingClient vs the
   same model, batch and AdamW in a plain PEFT + torch loop. torch.set_num_threads(--threads) for both; warm-up,
   then rounds of `--steps` steps in ABBA order (plain, local, local, plain, ...) so drift and machine noise hit
   both; the ratio local/plain is taken per round and its median reported (target <= 1.1).
2. Greedy generation, 16 prompts x 64 new tokens: 16 concurrent sample() calls (batched by the
   sampler's worker) vs one prompt at a time; tokens per second, median of `--gen-rounds`.
Everything (the demo tokenizer's cache, the model, the local client's checkpoints) is written under `--out`.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import peft
import tinker
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from benchkit import add_common_args, emit, out_dir
from loraexp.chat import BatchRenderer
from loraexp.demo.base_model import DemoBaseRecipe, new_model
from loraexp.demo.data import clean_examples
from loraexp.demo.tokenizer import DEMO_SYSTEM_PROMPT, DEMO_TOKENIZER
from loraexp.local_tinker import LocalServiceClient
from loraexp.service.datums import datum_from_row
from loraexp.tokenization import load_tokenizer

BATCH, RANK, LR = 8, 8, 1e-3
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def default_tiny_model(directory: Path, tokenizer) -> Path:
    """The demo base's shape and vocabulary with random weights (no pretraining: the step time is the same)."""
    new_model(DemoBaseRecipe(), tokenizer).save_pretrained(directory)
    return directory


def demo_rows(tokenizer, count: int, seed: int = 0) -> list[dict]:
    """Demo training rows as the render stage writes them: tokens, weight 1 on the answer span."""
    rendered = BatchRenderer(tokenizer, DEMO_SYSTEM_PROMPT).render(clean_examples(count, seed))
    return [{"tokens": tokens, "weights": [0] * prompt + [1] * (len(tokens) - prompt)} for tokens, prompt in rendered]


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


def bench_training(service: LocalServiceClient, base_dir: Path, rows: list[dict], steps: int, rounds: int, warmup: int = 10) -> dict:
    plain, local = plain_loop(base_dir, rows), local_loop(service, base_dir, rows)
    first_plain, first_local = plain(), local()
    assert abs(first_plain - first_local) < 1e-2, "the two loops must compute the same loss"
    time_steps(plain, warmup), time_steps(local, warmup)  # warm-up
    plain_s, local_s = [], []
    for round_number in range(rounds):
        if round_number % 2 == 0:
            plain_s.append(time_steps(plain, steps))
            local_s.append(time_steps(local, steps))
        else:
            local_s.append(time_steps(local, steps))
            plain_s.append(time_steps(plain, steps))
    ratios = [l / p for l, p in zip(local_s, plain_s)]
    return {"plain_s_per_step": statistics.median(plain_s), "local_s_per_step": statistics.median(local_s),
            "ratio_median": statistics.median(ratios), "ratios": ratios, "tokens_per_step": sum(len(r["tokens"]) - 1 for r in rows),
            "first_loss_plain": first_plain, "first_loss_local": first_local}


def bench_generation(service: LocalServiceClient, base_dir: Path, vocab: int, rounds: int, prompts: int = 16, new_tokens: int = 64) -> dict:
    sampler = service.create_sampling_client(base_model=str(base_dir)).result()
    rng = np.random.default_rng(1)
    inputs = [tinker.ModelInput.from_ints(rng.integers(2, vocab, int(rng.integers(30, 50))).tolist()) for _ in range(prompts)]
    params = tinker.SamplingParams(max_tokens=new_tokens, temperature=0.0, stop=[])  # no stops: every prompt decodes 64 tokens
    sampler.sample(inputs[0], 1, params).result()  # warm-up
    sequential_s, batched_s = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        one_by_one = [sampler.sample(prompt, 1, params).result() for prompt in inputs]
        sequential_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        futures = [sampler.sample(prompt, 1, params) for prompt in inputs]
        batched = [future.result() for future in futures]
        batched_s.append(time.perf_counter() - started)
        assert [r.sequences[0].tokens for r in batched] == [r.sequences[0].tokens for r in one_by_one], "batching must not change greedy tokens"
    total = prompts * new_tokens
    return {"one_at_a_time_tok_s": total / statistics.median(sequential_s), "concurrent_tok_s": total / statistics.median(batched_s),
            "speedup": statistics.median(s / b for s, b in zip(sequential_s, batched_s))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round (default 10; 2 with --tiny)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds, each timing both loops (ABBA order; default 20; 2 with --tiny)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps of each loop first (default 10; 1 with --tiny)")
    parser.add_argument("--gen-rounds", type=int, default=None, help="generation rounds (one at a time, then all concurrent; default 5; 1 with --tiny)")
    parser.add_argument("--gen-prompts", type=int, default=None, help="prompts per generation round (default 16; 4 with --tiny)")
    parser.add_argument("--gen-tokens", type=int, default=None, help="new tokens per prompt (default 64; 8 with --tiny)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, the same for both loops")
    args = parser.parse_args()
    defaults = {"steps": (10, 2), "rounds": (20, 2), "warmup": (10, 1), "gen_rounds": (5, 1), "gen_prompts": (16, 4), "gen_tokens": (64, 8)}
    for name, (full, tiny) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, tiny if args.tiny else full)
    torch.set_num_threads(args.threads)
    out = out_dir(args, "local_client")
    tokenizer = load_tokenizer(DEMO_TOKENIZER, out / "cache")
    rows = demo_rows(tokenizer, BATCH)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix="run-"))
    try:
        base_dir = default_tiny_model(tmp / "tiny", tokenizer)
        service = LocalServiceClient(tmp / "local_tinker")
        training = bench_training(service, base_dir, rows, args.steps, args.rounds, args.warmup)
        generation = bench_generation(service, base_dir, len(tokenizer), args.gen_rounds, args.gen_prompts, args.gen_tokens)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"torch threads: {torch.get_num_threads()}, vocab {len(tokenizer)}")
    print(f"training step, batch {BATCH} x ~{training['tokens_per_step'] // BATCH} tokens, LoRA r{RANK} attn+mlp, {args.rounds} rounds x {args.steps} steps:")
    print(f"  plain PEFT loop   {training['plain_s_per_step'] * 1000:.1f} ms/step (median)")
    print(f"  local client      {training['local_s_per_step'] * 1000:.1f} ms/step (median)")
    ratios = sorted(training["ratios"])
    print(f"  ratio local/plain {training['ratio_median']:.3f} median of per-round ratios (quartiles {ratios[len(ratios) // 4]:.3f}-{ratios[3 * len(ratios) // 4]:.3f}, "
          f"min {ratios[0]:.3f}, max {ratios[-1]:.3f})")
    print(f"greedy generation, {args.gen_prompts} prompts x {args.gen_tokens} new tokens, median of {args.gen_rounds} rounds:")
    print(f"  one at a time     {generation['one_at_a_time_tok_s']:.0f} tok/s")
    print(f"  {args.gen_prompts:<2d} concurrent     {generation['concurrent_tok_s']:.0f} tok/s ({generation['speedup']:.1f}x)")
    emit("local_client", {"threads": torch.get_num_threads(), "vocab": len(tokenizer), "steps": args.steps, "rounds": args.rounds,
                          **{key: value for key, value in training.items() if key != "ratios"}, "ratio_min": ratios[0], "ratio_max": ratios[-1],
                          "gen_prompts": args.gen_prompts, "gen_tokens": args.gen_tokens, **generation, "target": "ratio_median <= 1.1"})


if __name__ == "__main__":
    main()
