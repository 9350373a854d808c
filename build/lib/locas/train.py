"""Streaming test-time training: read a long token stream window by window, score, then update.

For each window the learner first *scores* the window with its current state (the reported
NLL), then *updates* on it. The first update step reuses the scoring forward pass, so the
overhead over plain scoring is one backward through frozen weights per window.

Windows overlap by one token: window ``i`` feeds ``tokens[s_i:e_i]`` (at most ``window_size``
tokens) and scores tokens ``s_i+1 .. e_i-1``, so every token but the first is scored exactly
once and never sees more than ``window_size - 1`` tokens of context (docs/SCORING.md).

    >>> learner = LocasLearner(lm, cfg)                      # or TruncateLearner, FullAttentionLearner, LoraLearner
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

from .config import TrainConfig, parse_layers
from .errors import LocasError
from .io import atomic_write
from .memory import clip_vectors_
from .objectives import get_objective


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


class Learner:
    """A method in the streaming protocol. Subclasses define how a window is scored and learned."""

    name = "base"
    trainable = False

    def __init__(self, lm, cfg: TrainConfig):
        self.lm = lm
        self.cfg = cfg

    def begin(self, tokens: torch.Tensor, first_span: tuple[int, int]) -> None:
        """Called once before the first window (e.g. to initialise a memory)."""

    def finish(self) -> None:
        """Called once after the stream (e.g. to remove adapters)."""

    def extra_params(self) -> int:
        return 0

    def parameters(self) -> list[torch.Tensor]:
        return []

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """(1, T) -> (1, T, V) with the learner's current state."""
        return self.lm.model(input_ids=ids, use_cache=False).logits

    def score_only(self, tokens: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Per-token NLL (T-1,) of the window, no learning."""
        with torch.no_grad():
            ids = tokens[start:end][None].to(self.lm.device)
            logits = self.logits(ids)
            return torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:], reduction="none")

    def after_step(self) -> None:
        """Hook after each optimiser step (norm clipping for Locas)."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"param.{i}": p.detach() for i, p in enumerate(self.parameters())}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for i, p in enumerate(self.parameters()):
                p.copy_(tensors[f"param.{i}"])


class LocasLearner(Learner):
    """Locas-GLU/MLP memory on the chosen layers, initialised from the first window."""

    name = "locas"
    trainable = True

    def __init__(self, lm, cfg: TrainConfig, memory: torch.Tensor | None = None):
        super().__init__(lm, cfg)
        self.layers = parse_layers(cfg.memory_layers, lm.num_layers)
        self.memory: torch.nn.Parameter | None = None
        if memory is not None:  # continue training an existing memory (full-size or layer subset)
            mem = memory[self.layers] if memory.shape[0] == lm.num_layers else memory
            self.memory = torch.nn.Parameter(mem.detach().clone().float().to(lm.device))
        lm.set_tau_scale(cfg.tau_scale)

    def begin(self, tokens, first_span):
        if self.memory is None:
            ids = tokens[first_span[0]:first_span[1]][None]
            mem = self.lm.memorize(ids, keep_top=self.cfg.memory_width, memory_init=self.cfg.memory_init,
                                   seed=self.cfg.seed)
            self.memory = torch.nn.Parameter(mem[self.layers].contiguous())

    def parameters(self):
        return [self.memory]

    def extra_params(self):
        return self.memory.numel()

    def logits(self, ids):
        with self.lm.use_memory(self.memory, self.layers):
            return self.lm.model(input_ids=ids, use_cache=False).logits

    def after_step(self):
        clip_vectors_(self.memory.data)

    def full_memory(self) -> torch.Tensor:
        """(L, 1, r, d, C) with zeros on layers without memory."""
        mem = self.memory.detach()
        full = torch.zeros((self.lm.num_layers,) + tuple(mem.shape[1:]), dtype=mem.dtype, device=mem.device)
        full[self.layers] = mem
        return full


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_at(cfg: TrainConfig, index: int, total: int) -> float:
    if cfg.schedule == "cosine" and total > 1:
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * index / (total - 1))))
    return cfg.lr


def _teacher_context(lm, cfg) -> int:
    return min(lm.max_length, cfg.sd_context or 4 * cfg.window_size)


def train_window(learner: Learner, optimizer, objective, tokens, span, cfg: TrainConfig) -> tuple[torch.Tensor, bool]:
    """Score the window, then update on it. Returns (per-token NLL before the update, skipped?)."""
    start, end = span
    ids = tokens[start:end][None].to(learner.lm.device)
    teacher = (objective.teacher(learner.lm, tokens, start, end, _teacher_context(learner.lm, cfg))
               if objective.needs_teacher else None)
    skipped = False
    score = None
    for step in range(cfg.steps_per_window):
        optimizer.zero_grad(set_to_none=True)
        loss, nll = objective(learner.logits(ids), ids, teacher)
        if step == 0:
            score = nll.detach()
        if not torch.isfinite(loss):
            skipped = True
            break
        loss.backward()
        if not guarded_step(learner, optimizer):
            skipped = True
            break
    return score, skipped


def guarded_step(learner: Learner, optimizer) -> bool:
    """Optimiser step + the learner's post-step hook; rolled back (False) if a parameter turns non-finite."""
    backup = [p.detach().clone() for p in learner.parameters()]
    optimizer.step()
    learner.after_step()
    if all(torch.isfinite(p).all() for p in learner.parameters()):
        return True
    with torch.no_grad():
        for p, b in zip(learner.parameters(), backup):
            p.copy_(b)
    return False


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


def stream(learner: Learner, tokens: torch.Tensor, cfg: TrainConfig, *, checkpoint_dir=None,
           checkpoint_every: int = 0, resume: bool = False, progress: bool = True,
           stop_after: int | None = None, desc: str | None = None) -> StreamResult:
    """Run ``learner`` over ``tokens`` (1-D) window by window; returns its scores.

    ``stop_after`` ends the run early after that many windows (used to test resumption).
    """
    tokens = tokens.flatten().cpu()
    spans = window_spans(len(tokens), cfg.window_size)
    schedule = [(e, s) for e in range(cfg.epochs) for s in spans]
    objective = get_objective(cfg.loss, cfg.mix_weight, cfg.sd_topk)
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
            if learner.trainable:
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(cfg, index, len(schedule))
                nll, skipped = train_window(learner, optimizer, objective, tokens, span, cfg)
                result.skipped_updates += int(skipped)
            else:
                nll = learner.score_only(tokens, *span)
            result.window_tokens.append(int(nll.numel()))
            result.window_nll.append(float(nll.sum()))
            if index + 1 == len(schedule) or schedule[index + 1][0] != epoch:
                result.epoch_bounds.append(index + 1)
            result.wall_s = time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(ppl=f"{result.ppl:.2f}")
            if ckpt is not None and checkpoint_every and (index + 1) % checkpoint_every == 0:
                _save_checkpoint(ckpt, learner, optimizer, result, index + 1, fingerprint)
    finally:
        bar.close()
    result.wall_s = time.perf_counter() - t0
    return result
