"""Streaming test-time training: read a long token stream window by window, score, then update.

For each window the learner first *scores* the window with its current state (the reported
NLL), then *updates* on it. The first update step reuses the scoring forward pass, so the
overhead over plain scoring is one backward through frozen weights per window. With
``update_every = N`` only every N-th window is learned from; the others are only scored.

Windows overlap by one token: window ``i`` feeds ``tokens[s_i:e_i]`` (at most ``window_size``
tokens) and scores tokens ``s_i+1 .. e_i-1``, so every token but the first is scored exactly
once and never sees more than ``window_size - 1`` tokens of context (docs/SCORING.md).

    >>> learner = make_learner("locas", lm, cfg)             # or truncate, full, lora, locas-mlp
    >>> result = stream(learner, tokens, cfg, checkpoint_dir="ckpt", checkpoint_every=8)
    >>> result.ppl, result.ppl_at((4096, 8192))
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..core.files import atomic_write
from ..errors import LocasError
from .config import TrainConfig
from .objectives import make_objective
from .step import lr_at, make_optimizer, set_lr


def check_window(lm, cfg) -> None:
    """A window must fit the model's context."""
    if cfg.window_size > lm.max_length:
        raise LocasError(f"--window-size {cfg.window_size} is longer than the model's context ({lm.max_length} "
                         f"tokens); use at most {lm.max_length}")


def window_spans(n_tokens: int, window: int, start: int = 0) -> list[tuple[int, int]]:
    """(start, end) of each window over tokens [start, n_tokens); consecutive windows share one token."""
    if n_tokens - start < 2:
        raise LocasError("the text is too short: it needs at least 2 tokens to score anything")
    spans = []
    while start + 1 < n_tokens:
        end = min(start + window, n_tokens)
        spans.append((start, end))
        start = end - 1
    return spans


@dataclass
class StreamResult:
    """Per-window scores of one method on one token stream."""

    method: str
    window_tokens: list[int] = field(default_factory=list)  # scored tokens per window
    window_nll: list[float] = field(default_factory=list)  # summed NLL per window
    wall_s: float = 0.0
    extra_params: int = 0
    skipped_updates: int = 0
    epoch_bounds: list[int] = field(default_factory=list)  # window index where each epoch ends

    @property
    def tokens(self) -> int:
        return sum(self.window_tokens)

    @property
    def ppl(self) -> float:
        return math.exp(sum(self.window_nll) / max(self.tokens, 1))

    def ppl_at(self, checkpoints) -> dict[int, float]:
        """Cumulative perplexity after the first ``c`` scored tokens (window granularity)."""
        out, nll, count, it = {}, 0.0, 0, iter(sorted(checkpoints))
        target = next(it, None)
        for n, s in zip(self.window_tokens, self.window_nll):
            nll, count = nll + s, count + n
            while target is not None and count >= target:
                out[target] = math.exp(nll / count)
                target = next(it, None)
        return out

    def curve(self) -> tuple[list[int], list[float]]:
        """(tokens read, cumulative perplexity) after each window."""
        xs, ys, nll, count = [], [], 0.0, 0
        for n, s in zip(self.window_tokens, self.window_nll):
            nll, count = nll + s, count + n
            xs.append(count)
            ys.append(math.exp(nll / count))
        return xs, ys

    def epoch_ppl(self) -> list[float]:
        """Perplexity of each pass over the text (for multi-epoch memorisation)."""
        out, lo = [], 0
        for hi in self.epoch_bounds or [len(self.window_nll)]:
            n = sum(self.window_tokens[lo:hi])
            out.append(math.exp(sum(self.window_nll[lo:hi]) / max(n, 1)))
            lo = hi
        return out

    def to_dict(self) -> dict:
        return asdict(self)


# ---- checkpoints -------------------------------------------------------------------------
def _save_checkpoint(path: Path, learner, optimizer, result: StreamResult, position: int, fingerprint: dict):
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in learner.state_tensors().items()}
    opt = optimizer.state_dict() if optimizer is not None else {"state": {}, "param_groups": []}
    for pid, st in opt["state"].items():
        for k, v in st.items():
            tensors[f"opt.{pid}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous().clone()
    name = f"state-{position}.safetensors"
    atomic_write(path / name, lambda tmp: save_file(tensors, tmp))
    record = {"position": position, "result": result.to_dict(), "fingerprint": fingerprint,
              "tensors": name, "param_groups": opt["param_groups"]}
    atomic_write(path / "checkpoint.json", lambda tmp: Path(tmp).write_text(json.dumps(record)))
    for old in path.glob("state-*.safetensors"):  # the json above is the commit point
        if old.name != name:
            old.unlink(missing_ok=True)


def _load_checkpoint(path: Path, learner, optimizer, fingerprint: dict):
    record_file = path / "checkpoint.json"
    if not record_file.is_file():
        return None
    try:
        record = json.loads(record_file.read_text())
        tensors = load_file(str(path / record["tensors"]))
    except Exception as exc:
        raise LocasError(f"checkpoint in '{path}' is unreadable ({exc}); delete it to start over") from None
    if record["fingerprint"] != fingerprint:
        raise LocasError(f"checkpoint in '{path}' belongs to a different run (settings or text changed); "
                         "delete it or use another --out")
    learner.load_state_tensors(tensors)
    if optimizer is not None and record["param_groups"]:
        state = {}
        for key, v in tensors.items():
            if key.startswith("opt."):
                _, pid, k = key.split(".", 2)
                state.setdefault(int(pid), {})[k] = v.to(learner.lm.device) if k != "step" else v
        optimizer.load_state_dict({"state": state, "param_groups": record["param_groups"]})
    return record["position"], StreamResult(**record["result"])


def stream(learner, tokens: torch.Tensor, cfg: TrainConfig, *, checkpoint_dir=None,
           checkpoint_every: int = 0, resume: bool = False, progress: bool = True,
           stop_after: int | None = None, desc: str | None = None, on_window=None) -> StreamResult:
    """Run ``learner`` over ``tokens`` (1-D) window by window; returns its scores.

    ``on_window(done, total, result)`` is called after every window (e.g. a server job's progress).

    ``stop_after`` ends the run early after that many windows (used to test resumption).
    """
    tokens = tokens.flatten().cpu()
    check_window(learner.lm, cfg)
    spans = window_spans(len(tokens), cfg.window_size)
    schedule = [(e, s) for e in range(cfg.epochs) for s in spans]
    objective = make_objective(cfg)
    if not objective.windows:
        raise LocasError(f"objective '{cfg.objective}' does not score windows, so it cannot stream a text; "
                         "stream with ntp, sd or mix")
    torch.manual_seed(cfg.seed)
    learner.begin(tokens, spans[0])
    optimizer = make_optimizer(learner.parameters(), cfg) if learner.trainable else None
    result = StreamResult(method=learner.name, extra_params=learner.extra_params())
    position = 0
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    fingerprint = {"cfg": cfg.to_dict(), "method": learner.name, "n_tokens": len(tokens),
                   "token_sum": int(tokens.sum()), "token_head": tokens[:64].tolist()}
    if ckpt is not None and resume:
        loaded = _load_checkpoint(ckpt, learner, optimizer, fingerprint)
        if loaded is not None:
            position, result = loaded
    bar = tqdm(total=len(schedule), initial=position, desc=desc or learner.name, disable=not progress,
               unit="win", dynamic_ncols=True)
    t0 = time.perf_counter() - result.wall_s
    try:
        for index in range(position, len(schedule)):
            if stop_after is not None and index >= stop_after:
                break
            epoch, span = schedule[index]
            if learner.trainable and index % cfg.update_every == 0:
                step = index // cfg.update_every
                set_lr(optimizer, lr_at(cfg, step, -(-len(schedule) // cfg.update_every)))
                nll, skipped = learner.learn(optimizer, objective, tokens, span, cfg)
                result.skipped_updates += int(skipped)
            else:
                nll = learner.score(tokens, *span)
            result.window_tokens.append(int(nll.numel()))
            result.window_nll.append(float(nll.sum()))
            if index + 1 == len(schedule) or schedule[index + 1][0] != epoch:
                result.epoch_bounds.append(index + 1)
            result.wall_s = time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(ppl=f"{result.ppl:.2f}")
            if on_window is not None:
                on_window(index + 1, len(schedule), result)
            if ckpt is not None and checkpoint_every and (index + 1) % checkpoint_every == 0:
                _save_checkpoint(ckpt, learner, optimizer, result, index + 1, fingerprint)
    finally:
        bar.close()
    result.wall_s = time.perf_counter() - t0
    return result
