"""Process-level numerics set-up for bit-exact CPU runs.

The oneMKL 2024.2 inside the PyTorch CPU wheels resolves each vector-math (VML) function's kernel on
its first call, and concurrent first calls from the intra-op threads can run one thread's chunk on a
low-accuracy kernel (pytorch/pytorch#188792). The result is a process whose first forward pass (RoPE's
cos/sin, exp, log, ...) differs from every other process's in the 7th digit (1 of ~180 standalone
processes here, more often in a loaded test suite): enough to break "a resumed run equals the uninterrupted one". Calling every such function
once on a one-element tensor, which never goes parallel, resolves the dispatch before any concurrent use.
"""

from __future__ import annotations

import functools

# torch unary ops that ATen routes to MKL VML (aten/src/ATen/cpu/vml.h), plus neighbours: a spare one costs nothing
VML_OPS = ("abs", "acos", "asin", "atan", "ceil", "cos", "cosh", "erf", "erfc", "erfinv", "exp", "expm1", "floor",
           "i0", "lgamma", "log", "log10", "log1p", "log2", "reciprocal", "round", "rsqrt", "sigmoid", "sin", "sinh",
           "sqrt", "tan", "tanh", "trunc")


@functools.cache
def warm_up_vector_math() -> list[str]:
    """Resolve the kernel dispatch of every VML-backed op single-threaded; call before any model runs. Returns the ops called."""
    import torch

    called = []
    for dtype in (torch.float32, torch.float64):
        value = torch.full((1,), 0.5, dtype=dtype)
        for name in VML_OPS:
            getattr(torch, name)(value)
            called.append(f"{name}:{str(dtype).removeprefix('torch.')}")
    return called
