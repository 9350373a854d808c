"""Baselines under the identical streaming protocol: truncation, full attention, TempLoRA."""

from .context import FullAttentionLearner, TruncateLearner
from .lora import LoraLearner

__all__ = ["FullAttentionLearner", "LoraLearner", "TruncateLearner"]
