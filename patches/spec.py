"""What the patcher needs to know about one model family."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class ModelSpec:
    """A model family whose attention goes through transformers' AttentionInterface.

    ``attention_classes``: class names of the modules that call the interface (the patcher refuses a model of this
    type in which it finds none, e.g. a custom subclass with its own attention). ``check(config)`` raises
    ``ValueError`` for configurations the kernels cannot run (Gemma's bidirectional flag; none for GPT-2 and BERT).
    """

    model_type: str
    attention_classes: tuple[str, ...]
    check: Optional[Callable[[object], None]] = None
