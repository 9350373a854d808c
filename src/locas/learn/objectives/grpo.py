"""GRPO for test-time memory: reinforce the memory on cloze questions cut from the text itself.

Group-relative policy optimisation (Shao et al., 2024) with the memory as the only trainable
policy parameters. For a prompt, sample ``G`` completions from the current model (memory on),
score each with a reward, normalise the rewards inside the group (``A_g = (r_g - mean) /
(std + eps)``) and take one gradient step on

    loss = -mean_g [ A_g * mean_t log pi(y_g,t | prompt, y_g,<t) ] + beta * KL_k3(pi || pi_base)

Samples are fresh (on-policy, one step per group), so the PPO ratio is 1 and clipping never
acts; it is omitted. The KL term uses the k3 estimator against the frozen base model. Groups
whose rewards are all equal carry no signal and are skipped. See docs/GRPO.md.

The prompts are cloze questions cut from the segment's passages (a conversation's turns, or a
text's sentences): the start of a passage (``Caroline said, "I went to the``) with the hidden span
the next few words, and the reward is token F1 between the sample's first words and the span.

    >>> items = cloze_items(segment, tokenizer, rng, n=4)            # ClozeItem(prompt_ids, target)
    >>> stats = grpo_step(learner, optimizer, items, f1_reward(tokenizer), GRPOConfig(group_size=4))
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...settings import setting, validate
from ...text.decoding import Decoder, Sampling
from ...text.metrics import f1_score, normalize_answer
from ...text.tokens import encode
from ..step import guarded_step
from .base import Objective


@dataclass
class GRPOConfig:
    """Settings of the GRPO objective."""

    group_size: int = setting(4, "GRPO: samples per cloze question (G)", flag="--grpo-group-size", minimum=2,
                              maximum=1024)
    max_new_tokens: int = setting(8, "GRPO: sampled completion length in tokens", flag="--grpo-max-new-tokens",
                                  minimum=1)
    temperature: float = setting(1.0, "GRPO: sampling temperature", flag="--grpo-temperature", positive=True,
                                 maximum=100.0)
    beta: float = setting(0.04, "GRPO: weight of the KL penalty towards the base model (0 = none)",
                          flag="--grpo-beta", minimum=0)
    items_per_session: int = setting(6, "GRPO: cloze questions made from each segment (LoCoMo: session)",
                                     flag="--grpo-items", minimum=1)
    items_per_step: int = setting(3, "GRPO: cloze questions per optimiser step", flag="--grpo-items-per-step",
                                  minimum=1)
    span_words: tuple[int, int] = setting((2, 4), "hidden span length range (words)", cli=False)
    prompt_words: int = setting(40, "GRPO: at most this many words of the passage before the span",
                                flag="--grpo-prompt-words", minimum=1)
    eps: float = setting(1e-4, "added to the group's reward spread", cli=False)

    def __post_init__(self):
        self.span_words = tuple(self.span_words)
        validate(self)


@dataclass
class ClozeItem:
    prompt_ids: list[int]
    target: str  # the hidden words


def _content(words: list[str]) -> bool:
    return any(len(w) >= 4 for w in normalize_answer(" ".join(words)).split())


def cloze_items(segment, tokenizer, rng: random.Random, n: int, cfg: GRPOConfig | None = None) -> list[ClozeItem]:
    """Up to ``n`` cloze questions from a segment's passages (one per passage): passage start -> the next
    2-4 words with content."""
    cfg = cfg or GRPOConfig()
    candidates = []
    for p, (_, text) in enumerate(segment.passages):
        words = text.split()
        lo, hi = cfg.span_words
        for start in range(3, len(words) - lo + 1):
            k = min(rng.randint(lo, hi), len(words) - start)
            if _content(words[start:start + k]):
                candidates.append((p, words, start, k))
    rng.shuffle(candidates)
    items, used = [], set()
    for p, words, start, k in candidates:
        if p in used:
            continue
        used.add(p)
        before = " ".join(words[max(0, start - cfg.prompt_words):start])
        prompt = f"{segment.header}{segment.passages[p][0]}{before}"
        items.append(ClozeItem(encode(tokenizer, prompt), re.sub(r"[\"]", "", " ".join(words[start:start + k]))))
        if len(items) == n:
            break
    return items


def f1_reward(tokenizer):
    """Reward: token F1 of the sample's first words (as many as the target has) against the target."""
    def reward(completion_ids: list[int], item: ClozeItem) -> float:
        text = tokenizer.decode(completion_ids, skip_special_tokens=True).split("\n")[0].split('"')[0]
        n = len(item.target.split())
        return f1_score(" ".join(text.split()[:n]), item.target)
    return reward


def sample_group(learner, prompt_ids: list[int], cfg: GRPOConfig, generator: torch.Generator | None = None):
    """(G, P + m) token ids: the prompt followed by sampled completions from the learner's current state
    (each up to its stop token, right-padded), and their lengths (G,)."""
    lm = learner.lm
    with learner.state().apply(lm) as model:
        decoder = Decoder(model, lm.tokenizer, prompt_ids[:-1], batch_size=cfg.group_size)
        outs = decoder.generate([prompt_ids[-1:]] * cfg.group_size, cfg.max_new_tokens,
                                sampling=Sampling(cfg.temperature, 1.0, generator))
    rows = [o.with_stop for o in outs]
    width = max(len(r) for r in rows)
    ids = torch.full((cfg.group_size, len(prompt_ids) + width), decoder.pad_id, dtype=torch.long)
    ids[:, :len(prompt_ids)] = torch.tensor(prompt_ids)
    for g, r in enumerate(rows):
        ids[g, len(prompt_ids):len(prompt_ids) + len(r)] = torch.tensor(r, dtype=torch.long)
    return ids.to(lm.device), torch.tensor([len(r) for r in rows])


def completion_logprobs(logits: torch.Tensor, ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Log-probabilities (G, m) of the completion tokens ``ids[:, P:]`` under ``logits`` (G, P+m, V)."""
    lp = F.log_softmax(logits[:, prompt_len - 1:-1].float(), -1)  # (G, m, V)
    return lp.gather(-1, ids[:, prompt_len:, None]).squeeze(-1)


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """(G,) rewards -> group-normalised advantages (zeros when all rewards are equal)."""
    std = rewards.std(unbiased=False)
    return (rewards - rewards.mean()) / (std + eps)


def grpo_loss(learner, ids: torch.Tensor, prompt_len: int, advantages: torch.Tensor, cfg: GRPOConfig,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """GRPO objective of one group; gradients reach only the learner's parameters."""
    logp = completion_logprobs(learner.logits(ids), ids, prompt_len)  # (G, m)
    mask = torch.ones_like(logp) if mask is None else mask.to(logp.dtype)
    per_token = -advantages[:, None] * logp
    if cfg.beta > 0:
        with torch.no_grad(), learner.frozen():
            base = completion_logprobs(learner.lm.model(input_ids=ids, use_cache=False).logits, ids, prompt_len)
        ratio = base - logp
        per_token = per_token + cfg.beta * (ratio.exp() - ratio - 1)  # k3 estimate of KL(pi || pi_base)
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()


def completion_mask(tokenizer, completions: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(G, m) 1 on each completion's tokens up to and including the first one that closes the quote or
    the line (the reward reads no further), 0 after it and on padding."""
    mask = (torch.arange(completions.shape[1])[None] < lengths[:, None]).float()
    for g, row in enumerate(completions.tolist()):
        for t, tok in enumerate(row[:int(lengths[g])]):
            piece = tokenizer.decode([tok])
            if "\n" in piece or '"' in piece:
                mask[g, t + 1:] = 0
                break
    return mask


def grpo_step(learner, optimizer, items: list, reward_fn, cfg: GRPOConfig, generator=None) -> dict:
    """One optimiser step over a few prompts. ``reward_fn(completion_ids, item) -> float``.

    Returns {"reward": mean reward of the samples, "groups": groups with signal, "loss": float}.
    """
    tokenizer = learner.lm.tokenizer
    optimizer.zero_grad(set_to_none=True)
    rewards_all, used, total = [], 0, 0.0
    for item in items:
        P = len(item.prompt_ids)
        ids, lengths = sample_group(learner, item.prompt_ids, cfg, generator)  # (G, P+m), (G,)
        comp = ids[:, P:].cpu()
        rewards = torch.tensor([reward_fn(row[:n], item) for row, n in zip(comp.tolist(), lengths.tolist())],
                               dtype=torch.float32)
        rewards_all.append(rewards)
        adv = group_advantages(rewards, cfg.eps).to(ids.device)
        if not adv.abs().sum() > 0:
            continue
        loss = grpo_loss(learner, ids, P, adv, cfg, completion_mask(tokenizer, comp, lengths).to(ids.device))
        loss = loss / len(items)
        if not torch.isfinite(loss):
            continue
        loss.backward()
        used += 1
        total += float(loss.detach())
    if used:
        guarded_step(learner, optimizer)
    mean = float(torch.cat(rewards_all).mean()) if rewards_all else 0.0
    return {"reward": mean, "groups": used, "loss": total}


class GRPO(Objective):
    name = "grpo"
    summary = "reinforce the memory on cloze questions cut from the text (--grpo-* settings)"
    requires = ("nltk",)  # the F1 reward's answer normalisation

    def __init__(self, cfg, settings=None):
        super().__init__(cfg, settings)
        self.grpo = getattr(settings, "grpo", None) or GRPOConfig()

    def update(self, learner, optimizer, segment, plan) -> dict:
        """``steps_per_window`` passes (or passes until the deadline) over cloze items made from the segment."""
        g = self.grpo
        tok = learner.lm.tokenizer
        items = cloze_items(segment, tok, plan.rng, g.items_per_session, g)
        rewards, groups = [], 0
        reward = f1_reward(tok)
        for pick in plan.batches(items, batch=g.items_per_step):
            st = grpo_step(learner, optimizer, pick, reward, g, plan.generator)
            rewards.append(st["reward"])
            groups += st["groups"]
        return {"reward": sum(rewards) / max(len(rewards), 1), "groups": groups, "steps": len(rewards)}
