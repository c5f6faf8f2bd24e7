"""T5 and its copies: an encoder-decoder whose attention adds a relative position bias to the scores.

``T5Attention`` (and ``MT5Attention``, ``UMT5Attention``, ``SwitchTransformersAttention``: the same class but for
names) passes the AttentionInterface its scaling (1.0: T5 does not scale its scores) and its ``position_bias``
(``[1, H, Q, K]``, computed by the first layer of each stack from a learned embedding of bucketed distances and handed
to the later ones; UMT5: every layer its own; zeros for cross-attention). The backend adds the bias to the scores: in
fused mode folded into an additive 4D mask with the padding (``hf._biased_mask``), in softmax mode added to the
scores before the kernel. A bias that needs a gradient (training) runs softmax mode's math, since the fused kernel's
backward gives no gradient for a mask. The decoder's self-attention is causal (``is_causal = config.is_decoder``), its
cross-attention not; masks come from ``create_causal_mask`` / ``create_bidirectional_mask``. The eager function the
backend replaces adds bias and mask to the scores and takes the softmax in the scores' dtype (the kernels: fp32).

transformers 5.4's T5 builds its attention itself and never calls the interface (the interface came between 5.4 and
5.17): patching refuses it. Checked in the sources of 5.4, 5.17 and 5.25; tests/test_patch_t5.py.
"""
from __future__ import annotations

import importlib
import inspect

from .spec import ModelSpec

# model_type -> (module under transformers.models, attention class)
FAMILY = {
    "t5": ("t5", "T5Attention"),
    "mt5": ("mt5", "MT5Attention"),
    "umt5": ("umt5", "UMT5Attention"),
    "switch_transformers": ("switch_transformers", "SwitchTransformersAttention"),
}


def calls_interface(model_type: str) -> bool:
    """Whether this transformers' attention class of ``model_type`` goes through the AttentionInterface."""
    module, cls = FAMILY[model_type]
    forward = getattr(importlib.import_module(f"transformers.models.{module}.modeling_{module}"), cls).forward
    try:
        source = inspect.getsource(forward)
    except (OSError, TypeError):  # no source to read: assume the older code
        return False
    return "attention_interface" in source


def _check(model_type: str):
    def check(config) -> None:
        if not calls_interface(model_type):
            import transformers

            raise ValueError(
                f"cannot patch this {model_type} model: transformers {transformers.__version__}'s "
                f"{FAMILY[model_type][1]} computes its attention itself, without the AttentionInterface (T5's models "
                f"call it from transformers 5.17 on); upgrade transformers to patch it"
            )

    return check


SPECS = tuple(ModelSpec(model_type=t, attention_classes=(cls,), check=_check(t)) for t, (_, cls) in FAMILY.items())
