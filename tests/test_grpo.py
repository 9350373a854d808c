"""GRPO on the memory: a toy task where the rewarded answer is learnable."""

from __future__ import annotations

import pytest
import torch

from conftest import random_ids
from locas.learn.config import TrainConfig
from locas.learn.learners import LocasLearner
from locas.learn.objectives.grpo import ClozeItem, GRPOConfig, group_advantages, grpo_step, sample_group
from locas.learn.step import make_optimizer
from test_locomo_support import char_lm, single_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")
TARGET = set(range(10, 20))  # reward = share of sampled tokens in this set (about 5 % by chance)


def reward(ids, item):
    return sum(t in TARGET for t in ids) / max(len(ids), 1)


def _setup(lr=5e-2):
    lm = char_lm(seed=0)
    prompt = random_ids(1, 8, seed=5)[0]
    cfg = TrainConfig(memory_width=8, lr=lr)
    learner = LocasLearner(lm, cfg)
    learner.begin(prompt, (0, len(prompt)))
    return lm, learner, make_optimizer(learner.parameters(), cfg), ClozeItem(prompt.tolist(), "")


def test_grpo_raises_mean_reward_and_trains_memory_only():
    lm, learner, opt, item = _setup()
    backbone = {k: v.clone() for k, v in lm.model.state_dict().items()}
    cfg = GRPOConfig(group_size=8, max_new_tokens=4, beta=0.04)
    gen = torch.Generator().manual_seed(0)
    big = GRPOConfig(group_size=64, max_new_tokens=4)

    def mean_reward():  # a fresh, large sample from the current memory
        ids, lengths = sample_group(learner, item.prompt_ids, big, torch.Generator().manual_seed(9))
        return sum(reward(r[:n], None) for r, n in zip(ids[:, 8:].tolist(), lengths.tolist())) / 64

    before = mean_reward()
    rewards = [grpo_step(learner, opt, [item], reward, cfg, gen)["reward"] for _ in range(40)]
    after = mean_reward()
    assert before < 0.15 and after > before + 0.25, (before, after)
    assert sum(rewards[-10:]) / 10 > sum(rewards[:10]) / 10 + 0.2
    assert all(torch.equal(v, backbone[k]) for k, v in lm.model.state_dict().items())
    assert learner.memory.norm(dim=-2).max() <= 1 + 1e-6  # norm clipping after each step


def test_no_signal_no_update():
    _, learner, opt, item = _setup()
    start = learner.memory.detach().clone()
    stats = grpo_step(learner, opt, [item], lambda ids, it: 1.0, GRPOConfig(group_size=4, max_new_tokens=3))
    assert stats["groups"] == 0 and torch.equal(learner.memory.detach(), start)


def test_group_advantages():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert torch.allclose(adv, torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-3)
    assert group_advantages(torch.tensor([0.5, 0.5])).abs().sum() == 0
