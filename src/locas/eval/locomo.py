"""LoCoMo harness: memorise a conversation session by session, answer its questions, score them.

Context modes (what the prompt holds when answering):

* ``full``        the whole conversation, cut from the front to fit the model's maximum length
* ``date_split``  only a short recent window (``recent_tokens``) of the conversation
* ``none``        no conversation at all: the memory alone must hold the facts

Memory types: ``locas``, ``lora`` (TempLoRA via peft) and ``none``. Memorisation is the same in
every context mode: sessions in date order, each cut into windows of at most ``window_size``
tokens, one update pass per session with the chosen TTT loss (``TTT_LOSSES`` below; add an
entry to plug in another objective), or, with ``session_budget``, as many passes as fit in that
many CPU-seconds per session (the same compute for every objective). Every run also answers with
the memory switched off in the same context mode (the no-memory control), side by side.

    >>> conv = get_conversation("conv-26")
    >>> out = run_conversation(lm, conv, LocomoSettings(memory_type="locas", ttt_loss="SD"), cfg)
    >>> summarize(out["answers"]["date_split"]["memory"])["single-hop"]["f1"]
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..answer import TEMPORAL_HINT, AnswerState, PrefixAnswerer, Prompt, tail_tokens
from ..config import TrainConfig
from ..data.locomo import CATEGORIES, CATEGORY_ORDER, Conversation, Session
from ..distributed import DistContext, run_sharded
from ..errors import LocasError
from ..grpo import GRPOConfig, cloze_items, f1_reward, grpo_step
from ..objectives import get_objective
from ..selfstudy import selfstudy_update
from ..train import LocasLearner, make_optimizer, train_window, window_spans
from .qa_metrics import ADVERSARIAL, TEMPORAL, score_item
from .report import bar_plot, format_table, markdown_table, write_json

CONTEXT_MODES = ("full", "date_split", "none")
MEMORY_TYPES = ("locas", "lora", "none")


@dataclass
class LocomoSettings:
    memory_type: str = "locas"  # locas | lora | none
    ttt_loss: str = "SD"  # a key of TTT_LOSSES
    context_mode: str = "date_split"  # full | date_split | none
    extra_contexts: tuple[str, ...] = ()  # also answer in these context modes with the same memory
    recent_tokens: int = 1024  # context kept by date_split
    max_new_tokens: int = 24
    batch_size: int = 16
    prompt_style: str = "auto"  # auto | chat | plain
    limit: int | None = None  # first N questions per conversation
    max_sessions: int | None = None  # only the first K sessions (by date) and the questions they answer
    session_budget: float | None = None  # CPU-seconds of training per session (None: a fixed number of passes)
    control: bool = True  # also answer with the memory off
    grpo: GRPOConfig = field(default_factory=GRPOConfig)

    def __post_init__(self):
        self.ttt_loss = self.ttt_loss.upper()
        if self.memory_type not in MEMORY_TYPES:
            raise LocasError(f"unknown memory type '{self.memory_type}'; choose {', '.join(MEMORY_TYPES)}")
        for mode in (self.context_mode, *self.extra_contexts):
            if mode not in CONTEXT_MODES:
                raise LocasError(f"unknown context mode '{mode}'; choose {', '.join(CONTEXT_MODES)}")
        if self.memory_type != "none" and self.ttt_loss not in TTT_LOSSES:
            raise LocasError(f"unknown TTT loss '{self.ttt_loss}'; choose {', '.join(TTT_LOSSES)}")
        if self.limit is not None and self.limit < 1:
            raise LocasError("--limit must be at least 1")
        if self.max_sessions is not None and self.max_sessions < 1:
            raise LocasError("--max-sessions must be at least 1")
        if self.session_budget is not None and not self.session_budget > 0:
            raise LocasError("--session-budget must be a positive number of CPU-seconds")

    @property
    def contexts(self) -> list[str]:
        return list(dict.fromkeys((self.context_mode, *self.extra_contexts)))

    def label(self) -> str:
        return "no-memory" if self.memory_type == "none" else f"{self.memory_type}-{self.ttt_loss}"

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("max_sessions", "session_budget"):  # unset: the fingerprint of runs made before they existed
            if d[key] is None:
                del d[key]
        return d


# ---- the conversation as one token stream --------------------------------------------------
@dataclass
class ConversationTokens:
    tokens: torch.Tensor  # (N,) all sessions in date order, LoCoMo prompt format
    sessions: list[tuple[Session, int, int]]  # (session, start, end) into ``tokens``


def tokenize_conversation(tokenizer, conv: Conversation) -> ConversationTokens:
    ids, spans = [], []
    for s in conv.chronological():
        piece = tokenizer(s.text(), add_special_tokens=False)["input_ids"]
        spans.append((s, len(ids), len(ids) + len(piece)))
        ids.extend(piece)
    return ConversationTokens(torch.tensor(ids, dtype=torch.long), spans)


def session_windows(start: int, end: int, window: int) -> list[tuple[int, int]]:
    """Cut a session [start, end) into windows of at most ``window`` tokens (sharing one token)."""
    return window_spans(end, window, start) if end - start >= 2 else []


# ---- test-time training losses: one entry per loss, all with the same signature --------------
@dataclass
class SessionJob:
    """What an update function gets for one session."""

    lm: object
    conv_tokens: ConversationTokens
    session: Session
    spans: list[tuple[int, int]]  # windows of this session in ``conv_tokens.tokens``
    cfg: TrainConfig
    settings: LocomoSettings
    rng: random.Random
    generator: torch.Generator
    deadline: float | None = None  # ``time.process_time()`` at which this session's CPU budget runs out

    def schedule(self, items: list, batch: int = 1, passes: int | None = None, shuffle: bool = False
                 ) -> Iterator[list]:
        """Batches of ``items`` to train on: ``passes`` passes (default ``cfg.steps_per_window``), or, with a
        ``deadline``, as many passes as fit in the budget. The clock is read before every batch; the first
        batch always runs, and ``shuffle`` reshuffles ``items`` (in place, with ``rng``) before each pass.

        >>> [b for b in job.schedule([1, 2, 3], batch=2, passes=2)]   # no deadline
        [[1, 2], [3], [1, 2], [3]]
        """
        passes = self.cfg.steps_per_window if passes is None else passes
        done = 0
        while items and (self.deadline is not None or done < passes):
            if shuffle:
                self.rng.shuffle(items)
            for i in range(0, len(items), batch):
                if self.deadline is not None and (done or i) and time.process_time() >= self.deadline:
                    return
                yield items[i:i + batch]
            done += 1


def sequence_update(learner, optimizer, job: SessionJob) -> dict:
    """NTP / SD / MIX through the streaming trainer's ``train_window``: one pass over the session's
    windows (``steps_per_window`` steps each), or passes until the session's CPU budget is spent."""
    objective = get_objective(job.settings.ttt_loss, job.cfg.mix_weight, job.cfg.sd_topk)
    nll, n, skipped, windows = 0.0, 0, 0, 0
    for (span,) in job.schedule(job.spans, passes=1):
        score, skip = train_window(learner, optimizer, objective, job.conv_tokens.tokens, span, job.cfg)
        if score is not None and windows < len(job.spans):  # NLL before training, first pass only
            nll, n = nll + float(score.sum()), n + score.numel()
        skipped, windows = skipped + int(skip), windows + 1
    return {"nll": nll / max(n, 1), "skipped": skipped, "steps": windows * job.cfg.steps_per_window}


def grpo_update(learner, optimizer, job: SessionJob) -> dict:
    """GRPO on cloze questions made from this session's turns (src/locas/grpo.py)."""
    g = job.settings.grpo
    tok = job.lm.tokenizer
    items = cloze_items(job.session, tok, job.rng, g.items_per_session, g)
    rewards, groups = [], 0
    reward = f1_reward(tok)
    for pick in job.schedule(items, batch=g.items_per_step):
        st = grpo_step(learner, optimizer, pick, reward, g, job.generator, tok)
        rewards.append(st["reward"])
        groups += st["groups"]
    return {"reward": sum(rewards) / max(len(rewards), 1), "groups": groups, "steps": len(rewards)}


# loss name -> update(learner, optimizer, SessionJob) -> stats dict
TTT_LOSSES = {"NTP": sequence_update, "SD": sequence_update, "ST": sequence_update, "MIX": sequence_update,
              "GRPO": grpo_update, "SELFSTUDY": selfstudy_update}


def make_learner(lm, memory_type: str, cfg: TrainConfig):
    if memory_type == "locas":
        return LocasLearner(lm, cfg)
    if memory_type == "lora":
        from ..baselines import LoraLearner

        return LoraLearner(lm, cfg)
    raise LocasError(f"memory type '{memory_type}' does not train")


def memorize_conversation(lm, conv_tokens: ConversationTokens, settings: LocomoSettings, cfg: TrainConfig,
                          progress: bool = True, desc: str = "memorise"):
    """Sessions in date order, one update pass each (``cfg.epochs`` passes), or ``settings.session_budget``
    CPU-seconds each. Returns (learner, stats): wall and CPU seconds, per-session stats."""
    torch.manual_seed(cfg.seed)  # every conversation starts from the seed: no dependence on rank or order
    learner = make_learner(lm, settings.memory_type, cfg)
    update = TTT_LOSSES[settings.ttt_loss]
    first = conv_tokens.sessions[0]
    learner.begin(conv_tokens.tokens, (first[1], min(first[2], first[1] + cfg.window_size)))
    optimizer = make_optimizer(learner.parameters(), cfg)
    rng, gen = random.Random(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    t0, c0 = time.perf_counter(), time.process_time()
    per_session = []
    jobs = [(e, s) for e in range(cfg.epochs) for s in conv_tokens.sessions]
    for epoch, (session, start, end) in tqdm(jobs, desc=desc, disable=not progress, unit="session",
                                             dynamic_ncols=True):
        c = time.process_time()
        job = SessionJob(lm, conv_tokens, session, session_windows(start, end, cfg.window_size), cfg, settings,
                         rng, gen, deadline=c + settings.session_budget if settings.session_budget else None)
        stats = update(learner, optimizer, job)
        per_session.append({"epoch": epoch, "session": session.index, "date": session.date, **stats,
                            "cpu_s": time.process_time() - c})
    return learner, {"train_s": time.perf_counter() - t0, "train_cpu_s": time.process_time() - c0,
                     "extra_params": learner.extra_params(),
                     "sessions": per_session, "order": [s.index for s, _, _ in conv_tokens.sessions]}


def learner_state(learner) -> AnswerState:
    if isinstance(learner, LocasLearner):
        return AnswerState(memory=learner.memory.detach(), layers=learner.layers)
    return AnswerState(module=learner.peft_model)


# ---- answering -------------------------------------------------------------------------------
def context_for(lm, conv_tokens: ConversationTokens, mode: str, settings: LocomoSettings, reserve: int) -> list[int]:
    """Context token ids for ``mode``; ``reserve`` = prompt overhead + question + answer tokens."""
    ids = conv_tokens.tokens.tolist()
    if mode == "none":
        return []
    budget = lm.max_length - reserve
    if mode == "date_split":
        budget = min(budget, settings.recent_tokens)
    return tail_tokens(ids, budget, lm.tokenizer)


def question_suffix(prompt: Prompt, item) -> list[int]:
    return prompt.suffix_ids(item.question, hint=TEMPORAL_HINT if item.category == TEMPORAL else "")


def answer_conversation(lm, conv: Conversation, conv_tokens: ConversationTokens, state: AnswerState, mode: str,
                        settings: LocomoSettings) -> dict:
    """Answer (the first ``limit``) questions of ``conv`` in context ``mode``; returns records and timing."""
    items = conv.qa[:settings.limit] if settings.limit else conv.qa
    probe = Prompt.build(lm.tokenizer, None, settings.prompt_style)
    suffixes = [question_suffix(probe, q) for q in items]
    reserve = probe.overhead() + max(len(s) for s in suffixes) + settings.max_new_tokens + 8
    ctx = context_for(lm, conv_tokens, mode, settings, reserve)
    prompt = Prompt.build(lm.tokenizer, ctx, settings.prompt_style)
    with state.apply(lm) as model:
        answerer = PrefixAnswerer(model, lm.tokenizer, prompt.prefix_ids, max_new_tokens=settings.max_new_tokens,
                                  batch_size=settings.batch_size)
        predictions = answerer.answer(suffixes)
    records = []
    for q, pred in zip(items, predictions):
        rec = {"question": q.question, "category": q.category, "answer": q.answer,
               "adversarial_answer": q.adversarial_answer, "prediction": pred}
        rec.update(score_item(pred, q.category, q.answer, q.adversarial_answer))
        records.append(rec)
    return {"records": records, "context_tokens": len(ctx), "prefix_tokens": len(prompt.prefix_ids),
            "prefill_s": answerer.prefill_s, "answer_s": answerer.decode_s,
            "questions_per_s": answerer.questions_per_second}


def run_conversation(lm, conv: Conversation, settings: LocomoSettings, cfg: TrainConfig, *, memory_path=None,
                     progress: bool = True, control_cache: dict | None = None) -> dict:
    """Memorise (unless memory type none), answer in every requested context, with and without memory.

    ``control_cache`` maps (sample_id, mode, limit, max_sessions) -> no-memory answers, so a
    benchmark computes them once. With ``settings.max_sessions`` the conversation is first cut to
    its first sessions (``Conversation.first_sessions``).
    """
    if settings.max_sessions:
        conv = conv.first_sessions(settings.max_sessions)
        if not conv.qa:
            raise LocasError(f"{conv.sample_id}: no question has all its evidence in the first "
                             f"{settings.max_sessions} sessions; raise --max-sessions")
    conv_tokens = tokenize_conversation(lm.tokenizer, conv)
    out = {"sample_id": conv.sample_id, "tokens": len(conv_tokens.tokens), "sessions": len(conv_tokens.sessions),
           "answers": {}}
    learner = None
    try:
        if settings.memory_type != "none":
            learner, out["train"] = memorize_conversation(lm, conv_tokens, settings, cfg, progress,
                                                          desc=f"{conv.sample_id} {settings.label()}")
            state = learner_state(learner)
            if memory_path is not None and isinstance(learner, LocasLearner):
                from ..io import save_memory

                save_memory(learner.full_memory(), memory_path, model=lm, layers=learner.layers,
                            init=cfg.memory_init, extra={"conversation": conv.sample_id, "ttt_loss": settings.ttt_loss,
                                                         "train": cfg.to_dict(), "tokens": len(conv_tokens.tokens)})
                out["memory_file"] = str(memory_path)
        for mode in settings.contexts:
            part = {}
            if learner is not None:
                part["memory"] = answer_conversation(lm, conv, conv_tokens, state, mode, settings)
            key = (conv.sample_id, mode, settings.limit, settings.max_sessions)
            if learner is None or settings.control:
                if control_cache is not None and key in control_cache:
                    part["control"] = control_cache[key]
                else:
                    part["control"] = answer_conversation(lm, conv, conv_tokens, AnswerState(), mode, settings)
                    if control_cache is not None:
                        control_cache[key] = part["control"]
            if learner is None:
                part["memory"] = part["control"]
            out["answers"][mode] = part
    finally:
        if learner is not None:
            learner.finish()
    return out


def run_conversations(lm, convs: list[Conversation], settings: LocomoSettings, cfg: TrainConfig, out_dir, *,
                      save_memories: bool = True, resume: bool = False, ctx: DistContext | None = None,
                      progress: bool = True) -> list[dict] | None:
    """``run_conversation`` on each conversation; under torchrun the conversations are sharded across ranks.

    Each finished conversation is kept as ``<out_dir>/parts/<sample_id>.json`` (Locas memories in
    ``<out_dir>/memories/``); with ``resume`` kept ones are reused. Rank 0 returns the runs in the
    order of ``convs``; other ranks return None. Every conversation starts from ``cfg.seed``, so the
    runs do not depend on how many processes share the work.
    """
    out = Path(out_dir)

    def work(conv: Conversation) -> dict:
        path = out / "memories" / f"{conv.sample_id}.locas" if save_memories and settings.memory_type == "locas" \
            else None
        return run_conversation(lm, conv, settings, cfg, memory_path=path, progress=progress)

    return run_sharded(ctx, convs, work, name=lambda c: c.sample_id, parts_dir=out / "parts", resume=resume,
                       fingerprint={"model": str(lm.name), "settings": settings.to_dict(), "config": cfg.to_dict()})


def method_results(runs: list[dict], settings: LocomoSettings) -> dict[str, dict]:
    """label -> summary, timing, extra params and training time, pooled over ``runs`` (one row a method)."""
    methods = {}
    for mode in settings.contexts:
        for which, label in (("memory", settings.label()), ("control", "no-memory")):
            if which == "control" and (settings.memory_type == "none" or not settings.control):
                continue
            trained = which == "memory" and settings.memory_type != "none"
            methods[f"{label} [{mode}]"] = {"summary": summarize(collect(runs, mode, which)),
                                            **timing(runs, mode, which), **train_totals(runs if trained else None)}
    return methods


def train_totals(runs: list[dict] | None) -> dict:
    """Extra parameters and training wall / CPU seconds summed over ``runs`` (None: an untrained row).
    Runs kept from before the CPU clock existed give NaN CPU seconds."""
    if not runs:
        return {"extra_params": 0, "train_s": 0.0, "train_cpu_s": 0.0}
    return {"extra_params": runs[0]["train"]["extra_params"], "train_s": sum(r["train"]["train_s"] for r in runs),
            "train_cpu_s": sum(r["train"].get("train_cpu_s", float("nan")) for r in runs)}


# ---- scoring summaries -------------------------------------------------------------------------
def summarize(records: list[dict]) -> dict:
    """Per category name: n, mean F1 (x100), EM (x100); adversarial adds refusal %; plus ``overall``.

    ``overall`` averages F1/EM over the non-adversarial questions (item-weighted).
    """
    out = {}
    for cat in CATEGORY_ORDER:
        rs = [r for r in records if r["category"] == cat]
        if not rs:
            continue
        row = {"n": len(rs), "f1": 100 * sum(r["f1"] for r in rs) / len(rs),
               "em": 100 * sum(r["em"] for r in rs) / len(rs)}
        if cat == ADVERSARIAL:
            row["refused"] = 100 * sum(r["refused"] for r in rs) / len(rs)
        out[CATEGORIES[cat]] = row
    rest = [r for r in records if r["category"] != ADVERSARIAL]
    if rest:
        out["overall"] = {"n": len(rest), "f1": 100 * sum(r["f1"] for r in rest) / len(rest),
                          "em": 100 * sum(r["em"] for r in rest) / len(rest)}
    return out


def paired_f1_difference(a: list[dict], b: list[dict], category: str = "overall", samples: int = 2000,
                         seed: int = 0) -> tuple[float, float, float]:
    """Mean F1 difference a - b (x100) over the same questions, with a 95 % paired bootstrap interval.

    ``a`` and ``b`` are answer records of the same questions in the same order (two methods on the
    same conversations); ``category`` is a name of ``CATEGORIES`` (e.g. "single-hop") or "overall"
    (the non-adversarial questions, as in ``summarize``).

    >>> paired_f1_difference(collect(runs_a, "none", "memory"), collect(runs_b, "none", "memory"), "multi-hop")
    (1.2, -2.5, 4.9)
    """
    if [r["question"] for r in a] != [r["question"] for r in b]:
        raise LocasError("the two methods answered different questions; compare runs of the same conversations")
    keep = (lambda c: c != ADVERSARIAL) if category == "overall" else (lambda c: CATEGORIES[c] == category)
    diffs = [100 * (x["f1"] - y["f1"]) for x, y in zip(a, b) if keep(x["category"])]
    if not diffs:
        return float("nan"), float("nan"), float("nan")
    d = torch.tensor(diffs, dtype=torch.float64)  # (Q,)
    pick = torch.randint(len(diffs), (samples, len(diffs)), generator=torch.Generator().manual_seed(seed))
    means = d[pick].mean(dim=1)  # (samples,)
    lo, hi = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return float(d.mean()), lo, hi


def collect(runs: list[dict], mode: str, which: str) -> list[dict]:
    return [r for run in runs for r in run["answers"][mode][which]["records"]]


def timing(runs: list[dict], mode: str, which: str) -> dict:
    parts = [run["answers"][mode][which] for run in runs]
    n = sum(len(p["records"]) for p in parts)
    answer_s = sum(p["answer_s"] for p in parts)
    prefill_s = sum(p["prefill_s"] for p in parts)
    return {"questions": n, "prefill_s": prefill_s, "answer_s": answer_s,
            "questions_per_s": n / answer_s if answer_s else 0.0,
            "questions_per_s_with_prefill": n / (answer_s + prefill_s) if answer_s + prefill_s else 0.0}


COLUMNS = ["single-hop", "multi-hop", "temporal", "open-domain", "overall"]


def table_rows(methods: dict[str, dict]) -> tuple[list[str], list[list]]:
    """methods: label -> {"summary": summarize(...), "extra_params": int, "wall_s": float, ...}."""
    header = ["method", *[f"{c} F1" for c in COLUMNS], "overall EM", "adv -F1", "adv refused %", "extra params",
              "train s", "train CPU s", "q/s"]
    rows = []
    for label, m in methods.items():
        s = m["summary"]
        adv = s.get("adversarial", {})
        rows.append([label, *[round(s.get(c, {}).get("f1", float("nan")), 1) for c in COLUMNS],
                     round(s.get("overall", {}).get("em", float("nan")), 1), round(adv.get("f1", float("nan")), 1),
                     round(adv.get("refused", float("nan")), 1), m.get("extra_params", 0),
                     round(m.get("train_s", 0.0), 1), round(m.get("train_cpu_s", float("nan")), 1),
                     round(m.get("questions_per_s", 0.0), 2)])
    return header, rows


def write_report(out_dir, methods: dict[str, dict], payload: dict, title: str) -> str:
    """results.json, results.md and f1_by_category.png; returns the text table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header, rows = table_rows(methods)
    write_json(out / "results.json", {**payload, "methods": methods})
    md = f"# {title}\n\n" + markdown_table(header, rows) + "\n\n" + (
        "F1 and EM in %, LoCoMo normalisation. `overall` = non-adversarial questions. `adv -F1` = minus the F1 "
        "against the adversarial trap answer (higher is better); `adv refused %` = share of adversarial answers "
        "that decline. q/s = questions per second of answering (prefix KV cache reused).\n")
    from ..io import atomic_write

    atomic_write(out / "results.md", lambda tmp: Path(tmp).write_text(md))
    groups = [c for c in COLUMNS] + ["adversarial"]
    series = {label: [m["summary"].get(c, {}).get("f1", 0.0) for c in groups] for label, m in methods.items()}
    bar_plot(out / "f1_by_category.png", groups, series, ylabel="F1 (%)", title=title)
    return format_table(header, rows)
