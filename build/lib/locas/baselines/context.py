"""Context baselines: the frozen model with a short or a long context, no learning.

* ``TruncateLearner``     sees only the window (the same context Locas sees).
* ``FullAttentionLearner`` sees up to ``full_context`` tokens (default: the model maximum) ending
  at the window's end; it scores exactly the same tokens as every other method.

    >>> result = stream(FullAttentionLearner(lm, cfg), tokens, cfg)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..train import Learner


class TruncateLearner(Learner):
    name = "truncate"

    def logits(self, ids):
        with self.lm.disabled():
            return self.lm.model(input_ids=ids, use_cache=False).logits


class FullAttentionLearner(Learner):
    name = "full"

    def context(self) -> int:
        return min(self.lm.max_length, self.cfg.full_context or self.lm.max_length)

    @torch.no_grad()
    def score_only(self, tokens, start, end):
        lo = max(0, end - max(self.context(), end - start))
        ids = tokens[lo:end][None].to(self.lm.device)
        with self.lm.disabled():
            logits = self.lm.model(input_ids=ids, use_cache=False).logits[0, start - lo: end - lo - 1]
        return F.cross_entropy(logits.float(), ids[0, start - lo + 1:], reduction="none")
