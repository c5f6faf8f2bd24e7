"""Hugging Face attention masks -> the compact forms the kernels read.

Three forms reach the kernels, never expanded in memory:

* ``PAD2D``  - a ``[B, K]`` padding mask as HF tokenizers give it (bool or integer, nonzero = attend).
* ``BOOL4D`` - a boolean mask broadcastable to ``[B, H, Q, K]`` (True = attend, the SDPA convention).
* ``ADD4D``  - a floating mask broadcastable to ``[B, H, Q, K]`` that is *added* to ``scale * scores`` (HF eager
  convention). ``-inf`` and values at or below half of the mask dtype's ``finfo.min`` count as masked: HF fills masked
  positions with ``finfo.min`` and may add two such masks, which must not wrap into a finite, attended score.

4D masks become stride-0 ``expand`` views, so broadcasting costs no memory. Boolean tensors are reinterpreted as
``uint8`` (same storage) because that is the element type the kernels load.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

NONE, PAD2D, BOOL4D, ADD4D = 0, 1, 2, 3
KIND_NAMES = {NONE: "none", PAD2D: "2d-padding", BOOL4D: "4d-bool", ADD4D: "4d-additive"}

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class MaskSpec:
    """A validated mask. ``tensor`` is ``[B, K]`` (PAD2D) or a ``[B, H, Q, K]`` view (BOOL4D/ADD4D) or None."""

    kind: int
    tensor: Optional[torch.Tensor]
    threshold: float = 0.0  # ADD4D: values <= threshold are masked

    @property
    def name(self) -> str:
        return KIND_NAMES[self.kind]


def masked_threshold(dtype: torch.dtype) -> float:
    """The additive value at or below which an entry counts as masked (half of ``finfo(dtype).min``)."""
    return float(torch.finfo(dtype).min) / 2


def prepare_mask(attention_mask: Optional[torch.Tensor], shape, device: torch.device) -> MaskSpec:
    """Validate ``attention_mask`` against scores of ``shape == (B, H, Q, K)`` and classify it.

    Raises ``ValueError`` for shapes, ``TypeError`` for dtypes and ``ValueError`` for a device mismatch.
    """
    if attention_mask is None:
        return MaskSpec(NONE, None)
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a torch.Tensor or None, got {type(attention_mask).__name__}")
    B, H, Q, K = shape
    if attention_mask.device != device:
        raise ValueError(
            f"attention_mask is on device {attention_mask.device} but the scores are on device {device}; move it there"
        )
    dt = attention_mask.dtype
    if attention_mask.dim() == 2:
        if dt.is_floating_point or dt.is_complex:
            raise TypeError(
                f"a 2D attention_mask must be bool or integer (nonzero = attend), got {dt}; a floating 2D mask is "
                "ambiguous (0/1 keep-mask or 0/-inf additive) - pass it as bool, or as an additive 4D mask"
            )
        if tuple(attention_mask.shape) != (B, K):
            raise ValueError(
                f"a 2D attention_mask must have shape [batch, k_len] = [{B}, {K}], got {list(attention_mask.shape)}"
            )
        t = attention_mask.view(torch.uint8) if dt == torch.bool else attention_mask
        return MaskSpec(PAD2D, t)
    if attention_mask.dim() == 4:
        try:
            view = attention_mask.expand(B, H, Q, K)
        except RuntimeError:
            raise ValueError(
                f"a 4D attention_mask must broadcast to the scores' shape [B, H, Q, K] = [{B}, {H}, {Q}, {K}], "
                f"got {list(attention_mask.shape)}"
            ) from None
        if dt == torch.bool:
            return MaskSpec(BOOL4D, view.view(torch.uint8) if view.numel() else view)
        if dt in _FLOAT_DTYPES:
            return MaskSpec(ADD4D, view, masked_threshold(dt))
        raise TypeError(
            f"a 4D attention_mask must be bool (True = attend) or floating (additive), got {dt}"
        )
    raise ValueError(
        f"attention_mask must be 2D [batch, k_len] or 4D broadcastable to [B, H, Q, K]; got {attention_mask.dim()}D "
        f"shape {list(attention_mask.shape)}"
    )


def keep_mask(spec: MaskSpec, shape, *, causal: bool, device) -> torch.Tensor:
    """The dense boolean ``[B, H, Q, K]`` keep-mask of ``spec`` plus causality (reference path only)."""
    B, H, Q, K = shape
    keep = torch.ones(shape, dtype=torch.bool, device=device)
    if spec.kind == PAD2D:
        keep = keep & (spec.tensor != 0)[:, None, None, :]
    elif spec.kind == BOOL4D:
        keep = keep & (spec.tensor != 0)
    elif spec.kind == ADD4D:
        m = spec.tensor
        keep = keep & ~((m == float("-inf")) | (m <= spec.threshold))
    if causal:
        i = torch.arange(Q, device=device)[:, None]
        j = torch.arange(K, device=device)[None, :]
        keep = keep & (j <= i + (K - Q))
    return keep
