"""LiTI (WARP stage 3): linear interpolation towards initialisation, θ_η = (1 − η)·θ_init + η·θ_merged.

Sliding η from 0 to 1 traces the KL–reward front; the next iteration starts from η = 0.3. The
endpoints are exact copies, never computed: η = 0 is θ_init bit for bit, η = 1 the merge as stored.
Intermediate η are computed from the merge *as stored* (rounded to the checkpoint's dtype), so a
LiTI written in the same pass as the merge equals one computed later from the saved merge.
"""

from __future__ import annotations

import torch


def check_eta(eta: float) -> float:
    eta = float(eta)
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta}")
    return eta


def liti_into(out: torch.Tensor, init: torch.Tensor, merged: torch.Tensor, eta: float, work: torch.Tensor) -> None:
    """out ← (1 − η)·init + η·merged for 0 < η < 1, computed in `work`'s dtype (float32 or float64).

    All four are flat tensors of one length; `work` is scratch, and is overwritten.
    """
    work.copy_(merged)
    work.mul_(eta)
    work.add_(init, alpha=1.0 - eta)  # mixed dtypes promote in place: no float copy of init
    out.copy_(work)


def liti(init: torch.Tensor, merged: torch.Tensor, eta: float) -> torch.Tensor:
    """LiTI of two in-memory tensors of one dtype; endpoints are copies (bit for bit)."""
    eta = check_eta(eta)
    if init.shape != merged.shape or init.dtype != merged.dtype:
        raise ValueError(f"LiTI needs tensors of one shape and dtype, got {init.shape}/{init.dtype} "
                         f"and {merged.shape}/{merged.dtype}")
    if eta == 0.0:
        return init.clone()
    if eta == 1.0:
        return merged.clone()
    work_dtype = torch.float64 if init.dtype == torch.float64 else torch.float32
    out = torch.empty_like(init)
    liti_into(out.view(-1), init.reshape(-1), merged.reshape(-1), eta, torch.empty(init.numel(), dtype=work_dtype))
    return out
