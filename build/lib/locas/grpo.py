"""GRPO for test-time memory: reinforce the memory on self-made cloze questions.

Group-relative policy optimisation (Shao et al., 2024) with the memory as the only trainable
policy parameters. For a prompt, sample ``G`` completions from the current model (memory on),
score each with a reward, normalise the rewards inside the group (``A_g = (r_g - mean) /
(std + eps)``) and take one gradient step on

    loss = -mean_g [ A_g * mean_t log pi(y_g,t | prompt, y_g,<t) ] + beta * KL_k3(pi || pi_base)

Samples are fresh (on-policy, one step per group), so the PPO ratio is 1 and clipping never
acts; it is omitted. The KL term uses the k3 estimator against the frozen base model (memory
off). Groups whose rewards are all equal carry no signal and are skipped. See docs/GRPO.md.

For LoCoMo the prompts are cloze questions cut from the conversation itself: the start of a
turn (``Caroline said, "I went to the``), the hidden span is the next few words, and the
reward is LoCoMo's token F1 between the first words of the sample and the span.

    >>> items = cloze_items(session, tokenizer, rng, n=4)            # ClozeItem(prompt_ids, target)
    >>> stats = grpo_step(learner, optimizer, items, f1_reward(tokenizer), GRPOConfig(group_size=4))
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .eval.qa_metrics import f1_score, normalize_answer
from .train import guarded_step


@dataclass
class GRPOConfig:
    group_size: int = 4  # G samples per prompt
    max_new_tokens: int = 8  # sampled completion length
    temperature: float = 1.0
    beta: float = 0.04  # weight of the KL penalty towards the base model (0 = none)
    items_per_session: int = 6  # cloze questions made from each session
    items_per_step: int = 3  # prompts per optimiser step
    span_words: tuple[int, int] = (2, 4)  # hidden span length range (words)
    prompt_words: int = 40  # at most this many words of the turn before the span
    eps: float = 1e-4


@dataclass
class ClozeItem:
    prompt_ids: list[int]
    target: str  # the hidden words


def _content(words: list[str]) -> bool:
    return any(len(w) >= 4 for w in normalize_answer(" ".join(words)).split())


def cloze_items(session, tokenizer, rng: random.Random, n: int, cfg: GRPOConfig | None = None) -> list[ClozeItem]:
    """Up to ``n`` cloze questions from one LoCoMo session: turn prefix -> next 2-4 content words."""
    cfg = cfg or GRPOConfig()
    candidates = []
    for turn in session.turns:
        words = turn.text.split()
        lo, hi = cfg.span_words
        for start in range(3, len(words) - lo + 1):
            k = min(rng.randint(lo, hi), len(words) - start)
            if _content(words[start:start + k]):
                candidates.append((turn, words, start, k))
    rng.shuffle(candidates)
    items, used = [], set()
    for turn, words, start, k in candidates:
        if id(turn) in used:
            continue
        used.add(id(turn))
        before = " ".join(words[max(0, start - cfg.prompt_words):start])
        prompt = f"DATE: {session.date}\n{turn.speaker} said, \"{before}"
        items.append(ClozeItem(tokenizer(prompt, add_special_tokens=False)["input_ids"],
                               re.sub(r"[\"]", "", " ".join(words[start:start + k]))))
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


@torch.no_grad()
def sample_group(learner, prompt_ids: list[int], cfg: GRPOConfig, generator: torch.Generator | None = None):
    """(G, P + m) token ids: the prompt followed by ``m`` sampled tokens, from the learner's current state."""
    dev = learner.lm.device
    ids = torch.tensor(prompt_ids, device=dev)[None].repeat(cfg.group_size, 1)  # (G, P)
    for _ in range(cfg.max_new_tokens):
        logits = learner.logits(ids)[:, -1].float() / max(cfg.temperature, 1e-5)  # (G, V)
        probs = torch.softmax(logits, -1)
        nxt = torch.multinomial(probs.cpu(), 1, generator=generator).to(dev)  # (G, 1)
        ids = torch.cat([ids, nxt], dim=1)
    return ids


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
        with torch.no_grad(), learner.lm.disabled():
            base = completion_logprobs(learner.lm.model(input_ids=ids, use_cache=False).logits, ids, prompt_len)
        ratio = base - logp
        per_token = per_token + cfg.beta * (ratio.exp() - ratio - 1)  # k3 estimate of KL(pi || pi_base)
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()


def _stop_mask(tokenizer, completions: torch.Tensor) -> torch.Tensor:
    """(G, m) 1 up to and including the first token that closes the quote or the line."""
    mask = torch.ones(completions.shape, dtype=torch.float32)
    if tokenizer is None:
        return mask
    for g, row in enumerate(completions.tolist()):
        for t, tok in enumerate(row):
            piece = tokenizer.decode([tok])
            if "\n" in piece or '"' in piece:
                mask[g, t + 1:] = 0
                break
    return mask


def grpo_step(learner, optimizer, items: list, reward_fn, cfg: GRPOConfig, generator=None,
              tokenizer=None) -> dict:
    """One optimiser step over a few prompts. ``reward_fn(completion_ids, item) -> float``.

    Returns {"reward": mean reward of the samples, "groups": groups with signal, "loss": float}.
    """
    optimizer.zero_grad(set_to_none=True)
    rewards_all, used, total = [], 0, 0.0
    for item in items:
        P = len(item.prompt_ids)
        ids = sample_group(learner, item.prompt_ids, cfg, generator)  # (G, P+m)
        comp = ids[:, P:].cpu()
        rewards = torch.tensor([reward_fn(row, item) for row in comp.tolist()], dtype=torch.float32)
        rewards_all.append(rewards)
        adv = group_advantages(rewards, cfg.eps).to(ids.device)
        if not adv.abs().sum() > 0:
            continue
        loss = grpo_loss(learner, ids, P, adv, cfg, _stop_mask(tokenizer, comp).to(ids.device)) / len(items)
        if not torch.isfinite(loss):
            continue
        loss.backward()
        used += 1
        total += float(loss.detach())
    if used:
        guarded_step(learner, optimizer)
    mean = float(torch.cat(rewards_all).mean()) if rewards_all else 0.0
    return {"reward": mean, "groups": used, "loss": total}
