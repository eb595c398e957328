"""The memory plan of the local backend: will the contract's model, adapter, optimizer and activations fit, before anything loads?

An estimate from the model's config alone (no weights read), per training step at the contract's batch size and
the render run's p95 row length, for the largest condition:

- base weights: parameters x bytes of the weight dtype;
- LoRA: parameters x 4 bytes x 4 (float32 weights, gradients, AdamW m and v);
- activations kept for backward, per token and layer: (9 h + 3 kv + 4 i) x weight bytes (norms, q/k/v, attention
  output, residuals, SwiGLU gate/up/act) plus the float32 inputs PEFT keeps for each adapted module; with gradient
  checkpointing only each layer's input plus one layer's full set;
- logits: tokens x vocab x (weight bytes + 4 + 4) (the logits, their float32 copy for the loss, its gradient).
Sampling needs the weights plus a KV cache of `sample_token_budget` tokens. Against the free memory of the device
(CUDA: cudaMemGetInfo; CPU: available RAM) times `local.memory_headroom`; a plan that does not fit stops the stage
with one line giving the estimate and what to change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from loraexp.contracts import Contract
from loraexp.errors import UserError

log = logging.getLogger(__name__)
GIB = 1024**3
OVERHEAD = 1.10  # allocator fragmentation, CUDA context, optimizer temporaries
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    layers: int
    q_width: int  # heads x head_dim
    kv_width: int  # kv heads x head_dim
    intermediate: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, config: Any) -> "ModelShape":
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        return cls(config.hidden_size, config.num_hidden_layers, config.num_attention_heads * head_dim, kv_heads * head_dim,
                   config.intermediate_size, config.vocab_size, bool(getattr(config, "tie_word_embeddings", False)))

    @property
    def parameters(self) -> int:
        h, q, kv, i = self.hidden, self.q_width, self.kv_width, self.intermediate
        per_layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h
        return self.layers * per_layer + self.vocab * h * (1 if self.tied else 2) + h

    def lora_parameters(self, rank: int, attn: bool, mlp: bool, unembed: bool) -> int:
        h, q, kv, i = self.hidden, self.q_width, self.kv_width, self.intermediate
        per_layer = (rank * ((h + q) + 2 * (h + kv) + (q + h)) if attn else 0) + (rank * 3 * (h + i) if mlp else 0)
        return self.layers * per_layer + (rank * (h + self.vocab) if unembed else 0)

    def lora_input_floats(self, attn: bool, mlp: bool) -> int:
        """Per token and layer, the float32 inputs PEFT keeps for the adapted modules' backward."""
        return (3 * self.hidden + self.q_width if attn else 0) + (2 * self.hidden + self.intermediate if mlp else 0)


def training_plan(shape: ModelShape, dtype: str, batch: int, tokens: int, rank: int, attn: bool, mlp: bool, unembed: bool, checkpointing: bool) -> dict:
    """Bytes per item of one training step (see the module docstring)."""
    weight = BYTES[dtype]
    step_tokens = batch * tokens
    per_layer = (9 * shape.hidden + 3 * shape.kv_width + 4 * shape.intermediate) * weight
    if dtype != "float32":
        per_layer += 4 * shape.lora_input_floats(attn, mlp)
    activations = step_tokens * (shape.layers * shape.hidden * weight + per_layer if checkpointing else shape.layers * per_layer)
    parts = {"weights": shape.parameters * weight, "lora_and_adamw": 16 * shape.lora_parameters(rank, attn, mlp, unembed),
             "activations": activations, "logits": step_tokens * shape.vocab * (weight + 8)}
    return {**parts, "total": int(OVERHEAD * sum(parts.values()))}


def sampling_plan(shape: ModelShape, dtype: str, token_budget: int) -> dict:
    weight = BYTES[dtype]
    parts = {"weights": shape.parameters * weight, "kv_cache": 2 * shape.layers * shape.kv_width * token_budget * weight}
    return {**parts, "total": int(OVERHEAD * sum(parts.values()))}


def free_bytes(device: Any) -> int:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def check_memory(contract: Contract, model_source: str, runtime: Any, stage: str, p95_tokens: int | None) -> dict:
    """The plan for `stage` (training stages at batch x p95 tokens, eval at the sampling budget); UserError when it does not fit."""
    from transformers import AutoConfig

    try:
        shape = ModelShape.from_config(AutoConfig.from_pretrained(model_source))
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("memory plan skipped: no readable config for %s (%s)", model_source, type(exc).__name__)
        return {}
    dtype = str(runtime.torch_dtype).removeprefix("torch.")
    headroom = contract.local.memory_headroom if contract.local else 0.9
    available = int(free_bytes(runtime.torch_device) * headroom)
    if stage == "eval":
        plan = sampling_plan(shape, dtype, runtime.sample_token_budget)
        fix = "lower local.sample_token_budget or eval.concurrency, or set local.dtype = \"bfloat16\""
        what = f"sampling with a {runtime.sample_token_budget:,}-token budget"
    elif p95_tokens:
        batch = max([contract.train.batch_size, *contract.lr_select.batch_size_candidates])
        biggest = max(contract.lora.conditions, key=lambda c: shape.lora_parameters(contract.rank_of(c), c.train_attn, c.train_mlp, c.train_unembed))
        flags = (contract.rank_of(biggest), biggest.train_attn, biggest.train_mlp, biggest.train_unembed)
        plan = training_plan(shape, dtype, batch, p95_tokens, *flags, runtime.gradient_checkpointing)
        what = f"a training step of {batch} rows x {p95_tokens} tokens (the render run's p95) for {biggest.name}"
        fix = "lower train.batch_size" + ("" if runtime.gradient_checkpointing else ", set local.gradient_checkpointing = true") + (
            ", set local.dtype = \"bfloat16\"" if dtype == "float32" else "")
        if not runtime.gradient_checkpointing:
            checkpointed = training_plan(shape, dtype, batch, p95_tokens, *flags, True)
            fix += f" (gradient checkpointing would need ~{checkpointed['total'] / GIB:.1f} GiB)"
    else:
        return {}
    plan = {**plan, "available": available, "device": str(runtime.torch_device), "dtype": dtype, "what": what}
    if plan["total"] > available:
        items = ", ".join(f"{name.replace('_', ' ')} {value / GIB:.1f}" for name, value in plan.items() if name not in ("total", "available", "device", "dtype", "what"))
        raise UserError(f"memory plan: {what} needs ~{plan['total'] / GIB:.1f} GiB on {plan['device']} in {dtype} ({items} GiB, +10%) but "
                        f"{available / GIB:.1f} GiB is free ({headroom:.0%} of what the device has free); {fix}")
    log.info("memory plan: %s needs ~%.1f GiB of %.1f GiB free on %s", what, plan["total"] / GIB, available / GIB, plan["device"])
    return plan
