"""Fast stand-ins for slow activation modules of Hugging Face models, swapped in at load time.

GPT-2's `gelu_new` (transformers' NewGELUActivation, also FastGELUActivation) computes the tanh
approximation of GELU, 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), as about eight separate tensor
operations in Python, each a pass over the MLP's widest activation, and autograd keeps the
intermediates for the backward. torch's `gelu(approximate="tanh")` is the same function in one
kernel, forward and backward (transformers' GELUTanh, the `gelu_pytorch_tanh` activation): 3.0 ms
against 9.1 ms forward + backward on a 32 × 52 × 512 float32 tensor on one CPU thread, with outputs
equal to 2.4e-7. At the 1k-vocabulary benchmark's size (benchmarks/train_step.py) these
activations were about a fifth of the step's CPU time (torch.profiler: mul, tanh, pow, add).

On a CPU that one kernel is itself slow: torch evaluates tanh there with SLEEF's 1-ulp tanh, about
3.2 ns per float32 on one AVX2 core against about 1 ns for exp or sigmoid (32 × 23 × 512 floats:
tanh 1.21 ms, sigmoid 0.36 ms). Since 0.5·(1 + tanh(a)) = sigmoid(2a), the same function is
x·sigmoid(x·(2c + 2c·0.044715·x²)), c = √(2/π): a few in-place multiply-adds and one sigmoid,
1.35 → 0.62 ms forward and 2.84 → 1.38 ms forward + backward at that size, with the float64
function matched as closely as the kernel matches it (5e-7 against 4e-7 on values, 5e-6 against
3e-6 on gradients). TanhGELU takes that form for float32/float64 on a CPU and keeps the kernel
everywhere else (on a GPU the one kernel is memory-bound and faster than several passes; bfloat16
would round at every step of the chain).
Only the module changes: the weights and the saved config (activation_function) stay as they were.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

_C = math.sqrt(2.0 / math.pi)
_K = 0.044715
# sigmoid's argument is x·(A + B·x²); its derivative A + 3B·x².
_A, _B = 2.0 * _C, 2.0 * _C * _K
_DB = 3.0 * _B
_SIGMOID_DTYPES = (torch.float32, torch.float64)


@functools.lru_cache(maxsize=16)
def _scalar(value: float, dtype: torch.dtype) -> torch.Tensor:
    """A 0-d CPU tensor of `value`, made once: creating it per call cost as much as the addcmul itself.
    Only ever read (addcmul's input), never written."""
    return torch.tensor(value, dtype=dtype)


def _poly(x: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """a + b·x² as one fresh tensor in one pass (addcmul onto a 0-d a), where x·x, ·b and +a were three
    passes: at the decode step's [32, 512] each op's dispatch costs as much as its arithmetic (the no-grad
    GELU at [32, 512] on one thread: 55 → 31 µs; at [960, 512]: 884 → 829 µs)."""
    return torch.addcmul(_scalar(a, x.dtype), x, x, value=b)


def _gate(x: torch.Tensor) -> torch.Tensor:
    """sigmoid(x·(A + B·x²)) in one fresh tensor, the rest in place."""
    return _poly(x, _A, _B).mul_(x).sigmoid_()


class _SigmoidGELU(torch.autograd.Function):
    """x·sigmoid(a(x)) with grad; backward: s + x·s·(1 − s)·a'(x), s saved from the forward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        s = _gate(x)
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        x, s = ctx.saved_tensors
        # One fresh tensor, the rest in place: on a CPU each fresh [tokens, 4d] tensor costs a pass over
        # cold memory that the arithmetic does not (1 − s as a tensor of its own took ~1 ms in the 1k step).
        slope = _poly(x, _A, _DB).mul_(x).mul_(s)  # x·a'(x)·s
        slope.addcmul_(slope, s, value=-1.0)  # x·a'(x)·s·(1 − s): sigmoid's derivative s·(1 − s)
        return slope.add_(s).mul_(grad)


def tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation, the function of F.gelu(x, approximate="tanh"), fastest per device."""
    if x.device.type != "cpu" or x.dtype not in _SIGMOID_DTYPES:
        return torch.nn.functional.gelu(x, approximate="tanh")
    if torch.is_grad_enabled() and x.requires_grad:
        return _SigmoidGELU.apply(x)
    return _gate(x).mul_(x)


class TanhGELU(torch.nn.Module):
    """GELU's tanh approximation as a module (what fuse_activations_ swaps in): tanh_gelu."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tanh_gelu(x)


def fuse_activations_(model: Any) -> int:
    """Replace every tanh-approximation GELU module (Python arithmetic, or torch's one tanh kernel) with
    TanhGELU, in place; returns how many were replaced."""
    from transformers.activations import FastGELUActivation, GELUTanh, NewGELUActivation

    slow = (NewGELUActivation, FastGELUActivation, GELUTanh)
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in slow:
                setattr(parent, name, TanhGELU())
                replaced += 1
    return replaced
