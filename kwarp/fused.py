"""Fused stand-ins for slow activation modules of Hugging Face models, swapped in at load time.

GPT-2's `gelu_new` (transformers' NewGELUActivation, also FastGELUActivation) computes the tanh
approximation of GELU, 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), as about eight separate tensor
operations in Python, each a pass over the MLP's widest activation, and autograd keeps the
intermediates for the backward. torch's `gelu(approximate="tanh")` is the same function in one
kernel, forward and backward (transformers' GELUTanh, the `gelu_pytorch_tanh` activation): 3.0 ms
against 9.1 ms forward + backward on a 32 × 52 × 512 float32 tensor on one CPU thread, with outputs
equal to 2.4e-7. At the 1k-vocabulary benchmark's size (benchmarks/train_step.py) these
activations were about a fifth of the step's CPU time (torch.profiler: mul, tanh, pow, add).
Only the module changes: the weights and the saved config (activation_function) stay as they were.
"""

from __future__ import annotations

from typing import Any


def fuse_activations_(model: Any) -> int:
    """Replace every tanh-approximation GELU module written as Python arithmetic with the fused kernel,
    in place; returns how many were replaced."""
    from transformers.activations import FastGELUActivation, GELUTanh, NewGELUActivation

    slow = (NewGELUActivation, FastGELUActivation)
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in slow:
                setattr(parent, name, GELUTanh())
                replaced += 1
    return replaced
