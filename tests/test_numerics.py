"""The VML warm-up covers every vector-math op the local client's model runs (pytorch/pytorch#188792)."""

from __future__ import annotations

import re

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from loraexp.service.datums import datum_from_row
from loraexp.local_tinker import model as lora
from loraexp.local_tinker.numerics import VML_OPS, warm_up_vector_math
from tiny_qwen3 import fixture_rows, make_tiny_qwen3

# The float ops ATen implements with MKL VML (aten/src/ATen/cpu/vml.h, IMPLEMENT_VML_MKL), whether or not loraexp uses them.
ATEN_VML = {"abs", "acos", "asin", "atan", "cos", "cosh", "erf", "erfc", "erfinv", "exp", "expm1", "log", "log10", "log1p",
            "log2", "sin", "sinh", "sqrt", "tan", "tanh", "trunc", "lgamma", "ceil", "floor", "round", "reciprocal", "rsqrt", "i0"}


class OpNames(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        base = func.__name__.split(".")[0]  # "cos.default" -> "cos"; "_foreach_sqrt_.default" -> "_foreach_sqrt_"
        self.names.add(re.sub(r"^_foreach_|_$", "", base))
        return func(*args, **(kwargs or {}))


def test_warm_up_calls_every_op_in_both_float_types():
    called = warm_up_vector_math()
    assert called == [f"{name}:{dtype}" for dtype in ("float32", "float64") for name in VML_OPS]
    assert ATEN_VML <= set(VML_OPS)


def test_a_training_step_and_generation_use_only_warmed_vector_math(tmp_path):
    base = make_tiny_qwen3(tmp_path / "tiny")
    spec = lora.LoraSpec("tiny", str(base), rank=4, seed=0, train_mlp=True, train_attn=True, train_unembed=True)
    model = lora.build_lora_model(spec, lora.Runtime())
    optimizer = torch.optim.AdamW(lora.trainable_parameters(model), lr=1e-3)
    batch = lora.batch_datums([datum_from_row(row) for row in fixture_rows(4)], torch.device("cpu"))
    recorder = OpNames()
    with recorder:
        loss = -(lora.target_logprobs(model, batch) * batch.weights).sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora.trainable_parameters(model), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.generate(input_ids=batch.input_ids[:2, :8], max_new_tokens=3, do_sample=False)
    used = recorder.names & ATEN_VML
    assert {"cos", "sin", "sqrt"} <= used, f"RoPE (cos, sin) and AdamW (sqrt) not seen: {sorted(recorder.names)}"
    assert used <= set(VML_OPS)
