"""TempLoRA: a peft LoRA adapter on every linear projection, trained with the streaming loop.

Targets q/k/v/o and gate/up/down (or the architecture's equivalents); ``lora_B`` starts at
zero, so the first window is scored by the exact base model. The adapter is removed again in
``finish()`` so several methods can run side by side on one model.

    >>> learner = LoraLearner(lm, TrainConfig(lora_rank=16, lr=3e-3))
    >>> result = stream(learner, tokens, cfg)
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import LocasError
from ..train import Learner


def linear_target_names(model: nn.Module) -> list[str]:
    """Leaf names of every Linear/Conv1D inside the decoder layers (not the LM head)."""
    names = set()
    for full, module in model.named_modules():
        if type(module).__name__ in ("Linear", "Conv1D") and (".layers." in full or ".h." in full):
            names.add(full.rsplit(".", 1)[-1])
    if not names:
        raise LocasError("found no linear projections inside the decoder layers for LoRA")
    return sorted(names)


class LoraLearner(Learner):
    name = "lora"
    trainable = True

    def __init__(self, lm, cfg):
        super().__init__(lm, cfg)
        self.peft_model = None

    def begin(self, tokens, first_span):
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(self.cfg.seed)
        config = LoraConfig(r=self.cfg.lora_rank, lora_alpha=self.cfg.lora_alpha or self.cfg.lora_rank,
                            lora_dropout=0.0, target_modules=linear_target_names(self.lm.model), bias="none")
        self.peft_model = get_peft_model(self.lm.model, config)
        self.params = [p for n, p in self.peft_model.named_parameters() if p.requires_grad]
        for p in self.params:  # adapters in float32 whatever the model dtype
            p.data = p.data.float()

    def parameters(self):
        return self.params

    def extra_params(self):
        return sum(p.numel() for p in self.params)

    def logits(self, ids):
        with self.lm.disabled():
            return self.peft_model(input_ids=ids, use_cache=False).logits

    def finish(self):
        if self.peft_model is not None:
            self.peft_model.unload()  # removes the LoRA layers, restoring the original modules
            self.peft_model = None
