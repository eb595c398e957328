"""The numerics behind the local client: base model loading, LoRA per Tinker's flags, summed cross-entropy.

LoRA follows the service: rank from the request, `lora_alpha` 32 and dropout 0 are owned by the
backend (the SDK cannot set them), targets per flag: attn = q/k/v/o_proj, mlp = gate/up/down_proj,
unembed = lm_head. `Runtime` says how the model runs: by default float32 on CPU (a saved state resumes
bit-exactly) and bfloat16 on CUDA. With a 16-bit base the LoRA weights, their gradients and the AdamW
state stay float32 (PEFT casts the adapter up, and its forward runs the adapter in float32).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import tinker
import torch
import torch.nn.functional as F

from loraexp.local_tinker.errors import bad_request, not_found

ATTN_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
UNEMBED_MODULES = ("lm_head",)
LORA_ALPHA = 32  # backend-owned, as on the service (cookbook hyperparam_utils assumes 32)
LORA_DROPOUT = 0.0  # backend-owned
ADAPTER_WEIGHTS = "adapter_model.safetensors"
OPTIMIZER_STATE = "optimizer.pt"


@dataclass(frozen=True)
class LoraSpec:
    """What a training run was created with; stored in run.json and beside every checkpoint."""

    base_model: str  # the name the caller used (e.g. "loraexp/tiny-qwen3-demo")
    base_source: str  # what from_pretrained reads (a local dir or an HF id)
    rank: int
    seed: int
    train_mlp: bool
    train_attn: bool
    train_unembed: bool

    def target_modules(self) -> list[str]:
        return [*(ATTN_MODULES if self.train_attn else ()), *(MLP_MODULES if self.train_mlp else ()),
                *(UNEMBED_MODULES if self.train_unembed else ())]


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """How the in-process model runs (training, validation and sampling alike)."""

    device: str = "auto"  # "auto" = cuda when available, else cpu; or "cpu", "cuda", "cuda:1"
    dtype: str = "auto"  # base weights: "auto" = bfloat16 on CUDA, float32 on CPU; or float32 / bfloat16 / float16
    attn_implementation: str = "sdpa"  # transformers' attention kernel: sdpa, eager, flash_attention_2
    gradient_checkpointing: bool = False  # recompute each layer's activations in backward: less memory, more time
    sample_token_budget: int = 262_144  # rows x (longest prompt + max new tokens) decoded together (KV-cache bound)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if self.torch_device.type == "cuda" else torch.float32
        return DTYPES[self.dtype]


def load_base_model(source: str, runtime: Runtime) -> torch.nn.Module:
    """The causal LM in eval mode (no dropout), in the runtime's dtype, attention kernel and device."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=runtime.torch_dtype, attn_implementation=runtime.attn_implementation)
    except (OSError, ValueError) as exc:
        raise not_found(f"cannot load base model {source!r} ({str(exc).splitlines()[0]}); give a local HF model dir "
                        f"or a Hub id already in the HF cache (huggingface-cli download {source})", "create_model") from None
    return model.to(runtime.torch_device).eval()


def build_lora_model(spec: LoraSpec, runtime: Runtime, training: bool = True) -> torch.nn.Module:
    """Base model + a fresh LoRA adapter whose init (A: kaiming, B: zeros) is seeded from `spec.seed`; float32 adapter on any base dtype."""
    import peft

    device = runtime.torch_device
    base = load_base_model(spec.base_source, runtime)
    config = peft.LoraConfig(r=spec.rank, lora_alpha=LORA_ALPHA, lora_dropout=LORA_DROPOUT, target_modules=spec.target_modules())
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tie_word_embeddings.*")  # lm_head LoRA adds a delta; the tied base weight stays frozen
        torch.manual_seed(spec.seed)
        model = peft.get_peft_model(base, config, autocast_adapter_dtype=True)  # a 16-bit base still gets a float32 adapter
    if training and runtime.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model.train()  # transformers checkpoints only in train mode; the model has no dropout (LoRA dropout 0)
    return model.eval()


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def save_adapter(model: torch.nn.Module, directory: Path) -> None:
    """A PEFT adapter dir (adapter_config.json + adapter_model.safetensors), full precision, as PeftModel.save_pretrained writes it."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    state = get_peft_model_state_dict(model, save_embedding_layers=False)
    save_file({key: value.detach().contiguous() for key, value in state.items()}, str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    model.peft_config["default"].save_pretrained(str(directory))


def load_adapter_weights(model: torch.nn.Module, directory: Path) -> None:
    """Overwrite the LoRA weights with a saved adapter's, refusing any mismatch in keys."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(directory / ADAPTER_WEIGHTS), device=str(next(model.parameters()).device))
    result = set_peft_model_state_dict(model, state)
    missing = [key for key in result.missing_keys if "lora_" in key]
    if missing or result.unexpected_keys:
        raise bad_request(f"checkpoint {directory.name} does not match this model's LoRA layout (missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})")


@dataclass
class TokenBatch:
    """Datums right-padded into one batch; pad positions carry weight 0 and are cut from the outputs."""

    input_ids: torch.Tensor  # [B, T] int64
    attention_mask: torch.Tensor | None  # [B, T]; None when every datum has the same length
    targets: torch.Tensor  # [B, T] int64
    weights: torch.Tensor  # [B, T] float32
    lengths: list[int]


def batch_datums(data: Sequence[tinker.Datum], device: torch.device) -> TokenBatch:
    if not data:
        raise bad_request("forward_backward needs at least one datum", "forward_backward")
    lengths = [datum.model_input.length for datum in data]
    width = max(lengths)
    input_ids = np.zeros((len(data), width), dtype=np.int64)
    targets = np.zeros((len(data), width), dtype=np.int64)
    weights = np.zeros((len(data), width), dtype=np.float32)
    for row, (datum, length) in enumerate(zip(data, lengths)):
        inputs = datum.loss_fn_inputs
        if "target_tokens" not in inputs or "weights" not in inputs:
            raise bad_request(f"cross_entropy needs loss_fn_inputs target_tokens and weights; datum {row} has {sorted(inputs)}", "forward_backward")
        target_row, weight_row = inputs["target_tokens"].to_numpy(), inputs["weights"].to_numpy()
        if target_row.shape != (length,) or weight_row.shape != (length,):
            raise bad_request(f"datum {row}: model_input has {length} tokens but target_tokens {target_row.shape} and weights {weight_row.shape}; all must have length N", "forward_backward")
        input_ids[row, :length] = datum.model_input.to_ints()
        targets[row, :length] = target_row
        weights[row, :length] = weight_row
    mask = None
    if min(lengths) != width:
        mask = torch.from_numpy((np.arange(width)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)).to(device)
    return TokenBatch(torch.from_numpy(input_ids).to(device), mask, torch.from_numpy(targets).to(device),
                      torch.from_numpy(weights).to(device), lengths)


def target_logprobs(model: torch.nn.Module, batch: TokenBatch) -> torch.Tensor:
    """log p(target_i | input[: i + 1]) for every position, [B, T] float32."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    flat = F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten(), reduction="none")
    return -flat.view_as(batch.weights)


def cross_entropy_output(logprobs: torch.Tensor, loss: torch.Tensor, batch: TokenBatch) -> tinker.ForwardBackwardOutput:
    """Per-datum logprobs (TensorData float32[N]) and the summed loss, shaped like the service's reply."""
    values = logprobs.detach().float().cpu().numpy()
    outputs = [{"logprobs": tinker.TensorData.from_numpy(np.ascontiguousarray(values[row, :length]))}
               for row, length in enumerate(batch.lengths)]
    return tinker.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord", loss_fn_outputs=outputs, metrics={"loss:sum": float(loss.detach())})
