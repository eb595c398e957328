"""The local backend at the reference experiment's scale: s/step, tokens/s, peak memory, greedy throughput, TRL beside it.

    python benchmarks/bench_reference_scale.py            # one GPU: a random Qwen3-8B (the real config, no download)
    python benchmarks/bench_reference_scale.py --tiny     # the same code on a small config on CPU, well under a minute

1. Builds a randomly initialised Qwen3ForCausalLM with the real Qwen3-8B configuration (hidden 4096, 36 layers,
   32 heads, 8 KV heads, intermediate 12,288, vocab 151,936, untied embeddings) in bfloat16 and saves it, so the
   local client loads it like any HF model dir.
2. The local client (loraexp's own, through its Tinker surface, the runtime of `[local]`): 20 training steps at
   batch 8 for attention_only and all_layer (LoRA r8), rows with lengths drawn from the reference distribution
   (lognormal, mean 340, p95 ~700 tokens; weight 0 on a ~90-token prompt, 1 on the answer); pipelined submission
   as the train stage does; s/step and tokens/s over the steps after 2 warm-up steps; peak device memory.
3. Greedy sampling: 64 prompts x 512 new tokens (no stop) at concurrency 16 through the sampler, tokens/s.
4. The same 20 batches (same rows, same order) through TRL's SFTTrainer + PEFT on the same model and LoRA config,
   s/step over the same steps: the ratio a user would compare.
5. Projects the reference sweep (6 runs x 6,338 steps + 7 validation passes of 2,818 rows each, 7 evaluations of
   1,319 questions x up to 512 new tokens) beside the hosted service's 30 h 52 min.
Results print as one JSON line {"reference_scale": {...}} and a Markdown table (and go to --out/reference_scale.json).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tinker
import torch

from benchkit import add_common_args, emit, out_dir
from loraexp.contracts import LoraCondition
from loraexp.local_tinker import LocalServiceClient
from loraexp.local_tinker.model import Runtime
from loraexp.service import local_service
from loraexp.service.datums import datum_from_row
from loraexp.service.memory import GIB, ModelShape, training_plan
from loraexp.service.retry import Retry
from loraexp.stages.eval import sample_one

HOSTED_SWEEP_SECONDS = 30 * 3600 + 52 * 60  # the reference sweep on the hosted service: 30 h 52 min
REFERENCE = {"runs": 6, "steps": 6338, "validations": 7, "val_rows": 2818, "models": 7, "questions": 1319, "new_tokens": 512}
CONDITIONS = (LoraCondition(name="attention_only", train_attn=True, train_mlp=False, train_unembed=False),
              LoraCondition(name="all_layer", train_attn=True, train_mlp=True, train_unembed=False))


@dataclass(frozen=True)
class Size:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    mean_tokens: float  # rendered row length: lognormal with this mean ...
    p95_tokens: float  # ... and this 95th percentile
    prompt_tokens: int  # weight-0 prefix (system prompt + question)
    steps: int
    batch: int
    prompts: int
    new_tokens: int
    concurrency: int


REFERENCE_SIZE = Size(4096, 36, 32, 8, 128, 12288, 151_936, 340, 700, 90, 20, 8, 64, 512, 16)
TINY = Size(64, 2, 4, 2, 16, 128, 512, 40, 80, 12, 6, 8, 8, 16, 4)


def lognormal_parameters(mean: float, p95: float) -> tuple[float, float]:
    """(mu, sigma) of the lognormal with this mean and 95th percentile (the smaller root of the quadratic in sigma)."""
    gap = math.log(p95 / mean)
    sigma = 1.6448536 - math.sqrt(1.6448536**2 - 2 * gap)
    return math.log(mean) - sigma**2 / 2, sigma


def rows(size: Size, count: int, seed: int = 0) -> list[dict]:
    """Rendered-row shaped dicts: random token ids, lengths from the reference distribution, loss on the answer."""
    rng = np.random.default_rng(seed)
    mu, sigma = lognormal_parameters(size.mean_tokens, size.p95_tokens)
    lengths = np.clip(np.round(rng.lognormal(mu, sigma, count)), size.prompt_tokens + 8, 8 * size.p95_tokens).astype(int)
    out = []
    for index, length in enumerate(lengths.tolist()):
        tokens = rng.integers(10, size.vocab - 10, length).tolist()
        out.append({"row_id": f"r{index}", "tokens": tokens, "weights": [0] * size.prompt_tokens + [1] * (length - size.prompt_tokens)})
    return out


def build_model(size: Size, directory: Path, device: torch.device, dtype: torch.dtype) -> Path:
    """A randomly initialised Qwen3 of this size, saved as an HF model dir (initialised on the device, in `dtype`)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=size.vocab, hidden_size=size.hidden, intermediate_size=size.intermediate, num_hidden_layers=size.layers,
                         num_attention_heads=size.heads, num_key_value_heads=size.kv_heads, head_dim=size.head_dim, tie_word_embeddings=False,
                         max_position_embeddings=40_960, rope_theta=1_000_000, eos_token_id=1, pad_token_id=0, bos_token_id=None)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(config).to(dtype)
    model.save_pretrained(str(directory))
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return directory


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # the process's peak RSS


def local_training(service, model_dir: Path, condition: LoraCondition, batches: list[list[tinker.Datum]], device: torch.device) -> dict:
    """Pipelined forward_backward + optim_step per batch (as the train stage submits them); per-step wall times."""
    client = service.new_training_client(str(model_dir), 8, 0, condition)
    reset_peak(device)
    adam = tinker.AdamParams(learning_rate=1e-4)
    times, losses, pending = [], [], []
    started = time.perf_counter()
    for batch in batches:  # two steps in flight, the train stage's submit_ahead depth
        pending.append((client.forward_backward(batch, "cross_entropy"), client.optim_step(adam)))
        if len(pending) > 1:
            output, _ = pending.pop(0)
            losses.append(output.result().metrics["loss:sum"])
            times.append(time.perf_counter())
    for output, optim in pending:
        losses.append(output.result().metrics["loss:sum"])
        optim.result()
        times.append(time.perf_counter())
    step_seconds = np.diff([started, *times])[2:]  # after 2 warm-up steps
    tokens = [sum(d.model_input.length for d in batch) for batch in batches][2:]
    return {"s_per_step": float(np.median(step_seconds)), "tokens_per_s": float(sum(tokens) / step_seconds.sum()),
            "peak_gib": peak_gib(device), "loss_finite": all(math.isfinite(loss) for loss in losses), "steps_timed": len(step_seconds)}


def local_sampling(service, model_dir: Path, size: Size, device: torch.device) -> dict:
    """`size.prompts` prompts x `size.new_tokens` new tokens (no stop) at `size.concurrency` in flight."""
    sampler = service.sampling_client(base_model=str(model_dir))
    prompts = [row["tokens"][: size.prompt_tokens] for row in rows(size, size.prompts, seed=1)]
    params = tinker.SamplingParams(max_tokens=size.new_tokens, temperature=0.0, stop=[])
    reset_peak(device)

    async def all_prompts() -> list:
        gate = asyncio.Semaphore(size.concurrency)
        return await asyncio.gather(*(sample_one(sampler, prompt, params, gate, Retry()) for prompt in prompts))

    started = time.perf_counter()
    sequences = asyncio.run(all_prompts())
    seconds = time.perf_counter() - started
    generated = sum(len(s.tokens) for s in sequences)
    return {"prompts": len(prompts), "new_tokens": size.new_tokens, "concurrency": size.concurrency, "generated_tokens": generated,
            "seconds": seconds, "tokens_per_s": generated / seconds, "peak_gib": peak_gib(device)}


def trl_training(model_dir: Path, condition: LoraCondition, batch_rows: list[list[dict]], device: torch.device, dtype: torch.dtype,
                 runtime: Runtime, out: Path) -> dict:
    """The same batches (same rows, same order) through TRL's SFTTrainer + PEFT; per-step wall times from a callback."""
    import datasets
    import peft
    from tokenizers import Tokenizer, models
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    stamps: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if not stamps:
                stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            stamps.append(time.perf_counter())

    flat = [row for batch in batch_rows for row in batch]
    dataset = datasets.Dataset.from_list([{"input_ids": row["tokens"], "labels": [t if w else -100 for t, w in zip(row["tokens"], row["weights"])]}
                                          for row in flat])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1}, unk_token="<unk>")), pad_token="<pad>")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, attn_implementation=runtime.attn_implementation).to(device)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj"] + (["gate_proj", "up_proj", "down_proj"] if condition.train_mlp else [])
    config = SFTConfig(output_dir=str(out / "trl"), per_device_train_batch_size=len(batch_rows[0]), max_steps=len(batch_rows), learning_rate=1e-4,
                       lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch", adam_beta2=0.95, weight_decay=0.0, logging_strategy="no",
                       report_to=[], save_strategy="no", bf16=dtype == torch.bfloat16, use_cpu=device.type == "cpu", max_length=None,
                       train_sampling_strategy="sequential", dataset_kwargs={"skip_prepare_dataset": True}, gradient_checkpointing=runtime.gradient_checkpointing,
                       dataloader_num_workers=0, seed=0, disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[StepTimes()],
                         peft_config=peft.LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0, target_modules=targets))
    reset_peak(device)
    with contextlib.redirect_stdout(sys.stderr):  # TRL prints its final metrics dict; stdout carries only this script's JSON
        trainer.train()
    step_seconds = np.diff(stamps)[2:]
    tokens = [sum(len(row["tokens"]) for row in batch) for batch in batch_rows][2:]
    result = {"s_per_step": float(np.median(step_seconds)), "tokens_per_s": float(sum(tokens) / step_seconds.sum()), "peak_gib": peak_gib(device),
              "steps_timed": len(step_seconds), "trl": __import__("trl").__version__}
    del trainer, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def projection(training: dict, sampling: dict) -> dict:
    """The reference sweep on this machine at the measured rates, beside the hosted service's 30 h 52 min."""
    mean_step = statistics.mean(result["s_per_step"] for result in training.values())
    train_seconds = REFERENCE["runs"] * REFERENCE["steps"] * mean_step
    # a validation pass is a gradient-free forward over 2,818 rows: about a third of a training step's work per row
    validation_seconds = REFERENCE["runs"] * REFERENCE["validations"] * (REFERENCE["val_rows"] / 8) * mean_step / 3
    eval_seconds = REFERENCE["models"] * REFERENCE["questions"] * REFERENCE["new_tokens"] / sampling["tokens_per_s"]  # upper bound: every answer 512 tokens
    total = train_seconds + validation_seconds + eval_seconds
    return {"train_hours": train_seconds / 3600, "validation_hours": validation_seconds / 3600, "eval_hours_upper_bound": eval_seconds / 3600,
            "total_hours": total / 3600, "hosted_hours": HOSTED_SWEEP_SECONDS / 3600, "speedup_vs_hosted": HOSTED_SWEEP_SECONDS / total}


def table(report: dict) -> str:
    lines = ["| measure | attention_only | all_layer |", "|---|---:|---:|"]
    local, trl = report["local_training"], report["trl_training"]
    lines.append("| local client s/step (batch 8, median after 2 warm-up) | " + " | ".join(f"{local[c]['s_per_step']:.3f}" for c in local) + " |")
    lines.append("| local client tokens/s | " + " | ".join(f"{local[c]['tokens_per_s']:,.0f}" for c in local) + " |")
    lines.append("| peak memory, training (GiB) | " + " | ".join(f"{local[c]['peak_gib']:.1f}" for c in local) + " |")
    lines.append("| TRL SFTTrainer + PEFT s/step, same batches | " + " | ".join(f"{trl[c]['s_per_step']:.3f}" for c in trl) + " |")
    lines.append("| local / TRL time per step | " + " | ".join(f"{local[c]['s_per_step'] / trl[c]['s_per_step']:.2f}" for c in trl) + " |")
    sampling, projected = report["sampling"], report["projection"]
    return "\n".join(lines + [
        "",
        f"Greedy sampling, {sampling['prompts']} prompts x {sampling['new_tokens']} new tokens at concurrency {sampling['concurrency']}: "
        f"{sampling['tokens_per_s']:,.0f} tokens/s (peak {sampling['peak_gib']:.1f} GiB).",
        f"Reference sweep projected: train {projected['train_hours']:.1f} h + validation {projected['validation_hours']:.1f} h + eval "
        f"<= {projected['eval_hours_upper_bound']:.1f} h = {projected['total_hours']:.1f} h, against {projected['hosted_hours']:.1f} h on the hosted service "
        f"({projected['speedup_vs_hosted']:.1f}x).",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)  # --tiny: a small config on CPU (a sanity run of the same code, not a measurement); --out
    parser.add_argument("--gradient-checkpointing", action="store_true", help="run the local client and TRL with gradient checkpointing")
    args = parser.parse_args()
    size = TINY if args.tiny else REFERENCE_SIZE
    runtime = Runtime(device="cpu" if args.tiny else "auto", dtype="float32" if args.tiny else "auto", gradient_checkpointing=args.gradient_checkpointing)
    device, dtype = runtime.torch_device, runtime.torch_dtype
    out = out_dir(args, "reference_scale")
    work = Path(tempfile.mkdtemp(dir=out, prefix="run-"))
    model_dir = build_model(size, work / "model", device, dtype)
    shape = ModelShape(size.hidden, size.layers, size.heads * size.head_dim, size.kv_heads * size.head_dim, size.intermediate, size.vocab, False)
    service = local_service(LocalServiceClient(work / "local_tinker", runtime=runtime))
    batch_rows = [rows(size, size.batch, seed=100 + step) for step in range(size.steps)]
    batches = [[datum_from_row(row) for row in batch] for batch in batch_rows]
    local = {c.name: local_training(service, model_dir, c, batches, device) for c in CONDITIONS}
    sampling = local_sampling(service, model_dir, size, device)
    trl = {c.name: trl_training(model_dir, c, batch_rows, device, dtype, runtime, work) for c in CONDITIONS}
    report = {
        "size": "tiny (CPU sanity run)" if args.tiny else "Qwen3-8B configuration, random weights", "config": size.__dict__,
        "parameters": shape.parameters, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "gradient_checkpointing": args.gradient_checkpointing,
        "memory_plan_gib": {c.name: training_plan(shape, str(dtype).removeprefix("torch."), size.batch, int(size.p95_tokens), 8, c.train_attn, c.train_mlp,
                                                  False, args.gradient_checkpointing)["total"] / GIB for c in CONDITIONS},
        "local_training": local, "sampling": sampling, "trl_training": trl, "projection": projection(local, sampling),
    }
    (out / ("reference_scale_tiny.json" if args.tiny else "reference_scale.json")).write_text(json.dumps(report, indent=2))
    emit("reference_scale", report)
    print(table(report), file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
