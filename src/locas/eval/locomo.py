"""LoCoMo harness: memorise a conversation session by session, answer its questions, score them.

Context modes (what the prompt holds when answering):

* ``full``        the whole conversation, cut from the front to fit the model's maximum length
* ``date_split``  only a short recent window (``recent_tokens``) of the conversation
* ``none``        no conversation at all: the memory alone must hold the facts

Methods: ``locas``, ``lora`` (TempLoRA via peft) and ``none``. Memorisation is the same in every
context mode: sessions in date order, each one a ``Segment`` (``locas.learn.segments``) that the
objective (any of ``locas.learn.objectives``) updates on once (``steps_per_window`` passes), or,
with ``session_budget``, for that many CPU-seconds per session (the same compute for every
objective). Every run also answers with the memory switched off in the same context mode (the
no-memory control), side by side.

    >>> conv = get_conversation("conv-26")
    >>> out = run_conversation(lm, conv, LocomoSettings(method="locas"), TrainConfig(objective="sd"))
    >>> summarize(out["answers"]["date_split"]["memory"])["single-hop"]["f1"]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..core.model import ModelState
from ..data.locomo import CATEGORIES, CATEGORY_ORDER, Conversation
from ..distributed import DistContext, run_sharded
from ..errors import LocasError
from ..learn.config import TrainConfig
from ..learn.objectives import ObjectiveSettings, make_objective
from ..learn.segments import Segment, train_segments
from ..probes.config import ProbeConfig
from ..settings import setting, validate
from ..text.decoding import Decoder
from ..text.metrics import ADVERSARIAL, TEMPORAL, score_item
from ..text.prompts import INSTRUCTION, PROMPT_STYLES, TEMPORAL_HINT, Prompt
from ..text.tokens import tail_tokens
from .report import bar_plot, format_table, markdown_table, write_json

CONTEXT_MODES = ("full", "date_split", "none")
LOCOMO_METHODS = ("locas", "lora", "none")
# the self-study probes of a session: fact probes (a session is short), asked in the harness's answer prompt
LOCOMO_PROBES = ProbeConfig(families=("fact",), chunk_tokens=1024, answer_tokens=16, instruction=INSTRUCTION)


@dataclass
class LocomoSettings:
    """What a LoCoMo run compares and how it answers."""

    method: str = setting("locas", "what memorises the conversation: locas, lora (TempLoRA) or none",
                          choices=LOCOMO_METHODS, aliases=("--memory-type",))
    context_mode: str = setting("date_split", "what the prompt holds when answering: full (the whole conversation), "
                                "date_split (the recent window) or none", choices=CONTEXT_MODES)
    extra_contexts: tuple[str, ...] = setting((), "also answer in these context modes with the same memory",
                                              flag="--also-context", choices=CONTEXT_MODES)
    recent_tokens: int = setting(1024, "conversation tokens kept in the prompt by date_split", minimum=1)
    max_new_tokens: int = setting(24, "answer length limit in tokens", minimum=1)
    batch_size: int = setting(16, "questions decoded together on the cached prompt prefix", minimum=1)
    prompt_style: str = setting("auto", "answer prompt: auto (chat when the tokenizer has a template), chat or plain",
                                choices=PROMPT_STYLES)
    limit: int | None = setting(None, "only the first N questions of each conversation (default: all)", minimum=1)
    max_sessions: int | None = setting(None, "memorise only the first K sessions (by date) and ask only the "
                                              "questions they answer (default: all)", minimum=1)
    session_budget: float | None = setting(None, "CPU-seconds of training per session (repeated passes, probe "
                                                  "making included) instead of one pass (default: one pass)",
                                           positive=True)
    control: bool = setting(True, "also answer with the memory off (the no-memory control)")

    def __post_init__(self):
        self.extra_contexts = tuple(self.extra_contexts)
        if self.method not in LOCOMO_METHODS:
            raise LocasError(f"unknown LoCoMo method '{self.method}'; choose {', '.join(LOCOMO_METHODS)} "
                             "(truncate and full are PG-19's; here the context mode sets the context)")
        for mode in (self.context_mode, *self.extra_contexts):
            if mode not in CONTEXT_MODES:
                raise LocasError(f"unknown context mode '{mode}'; choose {', '.join(CONTEXT_MODES)}")
        validate(self)

    @property
    def contexts(self) -> list[str]:
        return list(dict.fromkeys((self.context_mode, *self.extra_contexts)))

    def label(self, objective: str) -> str:
        """The run's row name: ``locas-SD``, ``lora-NTP``, ... or ``no-memory``."""
        return "no-memory" if self.method == "none" else f"{self.method}-{objective.upper()}"

    def to_dict(self) -> dict:
        return asdict(self)


def locomo_objectives(lm, settings: LocomoSettings, objectives: ObjectiveSettings | None = None) -> ObjectiveSettings:
    """Objective settings for LoCoMo: self-study probes default to ``LOCOMO_PROBES`` and are always asked in
    the harness's own answer prompt."""
    objectives = objectives or ObjectiveSettings(probes=LOCOMO_PROBES)
    style = Prompt.resolve_style(lm.tokenizer, settings.prompt_style)
    return ObjectiveSettings(selfstudy=objectives.selfstudy, grpo=objectives.grpo,
                             probes=ProbeConfig(**{**objectives.probes.to_dict(), "prompt_style": style,
                                                   "instruction": INSTRUCTION}))


def run_fingerprint(lm, settings: LocomoSettings, cfg: TrainConfig, objectives: ObjectiveSettings) -> dict:
    """What a kept conversation part must match to be reused: the model, the settings and what the
    objective reads. (Parts kept by locas 0.1 had another form and are recomputed.)"""
    fp = {"model": str(lm.name), "settings": settings.to_dict(), "config": cfg.to_dict()}
    if settings.method != "none" and cfg.objective == "selfstudy":
        fp["selfstudy"] = {**asdict(objectives.selfstudy), "probes": objectives.probes.to_dict()}
    if settings.method != "none" and cfg.objective == "grpo":
        fp["grpo"] = asdict(objectives.grpo)
    return fp


# ---- the conversation as one token stream --------------------------------------------------
@dataclass
class ConversationTokens:
    tokens: torch.Tensor  # (N,) all sessions in date order, LoCoMo prompt format
    sessions: list  # (session, start, end) into ``tokens``


def tokenize_conversation(tokenizer, conv: Conversation) -> ConversationTokens:
    ids, spans = [], []
    for s in conv.chronological():
        piece = tokenizer(s.text(), add_special_tokens=False)["input_ids"]
        spans.append((s, len(ids), len(ids) + len(piece)))
        ids.extend(piece)
    return ConversationTokens(torch.tensor(ids, dtype=torch.long), spans)


def session_segments(conv_tokens: ConversationTokens, cfg: TrainConfig) -> list[Segment]:
    """One segment per session, in date order: its windows, its text, its turns as passages (``Ann said, "``)."""
    return [Segment(conv_tokens.tokens, (start, end), session.text(),
                    [(f'{t.speaker} said, "', t.text) for t in session.turns], f"DATE: {session.date}\n",
                    seed=cfg.seed * 1000 + session.index, name=str(session.index), window=cfg.window_size)
            for session, start, end in conv_tokens.sessions]


def memorize_conversation(lm, conv_tokens: ConversationTokens, settings: LocomoSettings, cfg: TrainConfig,
                          objectives: ObjectiveSettings | None = None, progress: bool = True, desc: str = "memorise"):
    """Sessions in date order, one update each (``cfg.epochs`` passes over the sessions), or
    ``settings.session_budget`` CPU-seconds each. Returns (learner, stats): wall and CPU seconds, per-session
    stats."""
    objective = make_objective(cfg, locomo_objectives(lm, settings, objectives))
    learner, stats = train_segments(lm, session_segments(conv_tokens, cfg), objective, cfg, method=settings.method,
                                    budget_s=settings.session_budget, progress=progress, desc=desc)
    dates = {str(s.index): s.date for s, _, _ in conv_tokens.sessions}
    stats["sessions"] = [{"epoch": st["epoch"], "session": int(st["segment"]), "date": dates[st["segment"]],
                          **{k: v for k, v in st.items() if k not in ("epoch", "segment")}}
                         for st in stats.pop("segments")]
    stats["order"] = [s.index for s, _, _ in conv_tokens.sessions]
    return learner, stats


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


def answer_conversation(lm, conv: Conversation, conv_tokens: ConversationTokens, state: ModelState, mode: str,
                        settings: LocomoSettings) -> dict:
    """Answer (the first ``limit``) questions of ``conv`` in context ``mode``; returns records and timing."""
    items = conv.qa[:settings.limit] if settings.limit else conv.qa
    probe = Prompt.build(lm.tokenizer, None, settings.prompt_style)
    suffixes = [question_suffix(probe, q) for q in items]
    reserve = probe.overhead() + max(len(s) for s in suffixes) + settings.max_new_tokens + 8
    ctx = context_for(lm, conv_tokens, mode, settings, reserve)
    prompt = Prompt.build(lm.tokenizer, ctx, settings.prompt_style)
    with state.apply(lm) as model:
        answerer = Decoder(model, lm.tokenizer, prompt.prefix_ids, max_new_tokens=settings.max_new_tokens,
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


def run_conversation(lm, conv: Conversation, settings: LocomoSettings, cfg: TrainConfig, *,
                     objectives: ObjectiveSettings | None = None, memory_path=None, progress: bool = True,
                     control_cache: dict | None = None) -> dict:
    """Memorise (unless the method is none), answer in every requested context, with and without memory.

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
        if settings.method != "none":
            learner, out["train"] = memorize_conversation(lm, conv_tokens, settings, cfg, objectives, progress,
                                                          desc=f"{conv.sample_id} {settings.label(cfg.objective)}")
            state = learner.state()
            if memory_path is not None and settings.method == "locas":
                from ..core.files import save_memory

                save_memory(learner.full_memory(), memory_path, model=lm, layers=learner.layers,
                            init=cfg.memory_init, extra={"conversation": conv.sample_id, "objective": cfg.objective,
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
                    part["control"] = answer_conversation(lm, conv, conv_tokens, ModelState(), mode, settings)
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
                      objectives: ObjectiveSettings | None = None, save_memories: bool = True, resume: bool = False,
                      ctx: DistContext | None = None, progress: bool = True) -> list[dict] | None:
    """``run_conversation`` on each conversation; under torchrun the conversations are sharded across ranks.

    Each finished conversation is kept as ``<out_dir>/parts/<sample_id>.json`` (Locas memories in
    ``<out_dir>/memories/``); with ``resume`` kept ones are reused. Rank 0 returns the runs in the
    order of ``convs``; other ranks return None. Every conversation starts from ``cfg.seed``, so the
    runs do not depend on how many processes share the work.
    """
    out = Path(out_dir)
    objectives = locomo_objectives(lm, settings, objectives)

    def work(conv: Conversation) -> dict:
        path = out / "memories" / f"{conv.sample_id}.locas" if save_memories and settings.method == "locas" else None
        return run_conversation(lm, conv, settings, cfg, objectives=objectives, memory_path=path, progress=progress)

    return run_sharded(ctx, convs, work, name=lambda c: c.sample_id, parts_dir=out / "parts", resume=resume,
                       fingerprint=run_fingerprint(lm, settings, cfg, objectives))


def method_results(runs: list[dict], settings: LocomoSettings, objective: str) -> dict[str, dict]:
    """label -> summary, timing, extra params and training time, pooled over ``runs`` (one row a method)."""
    methods = {}
    for mode in settings.contexts:
        for which, label in (("memory", settings.label(objective)), ("control", "no-memory")):
            if which == "control" and (settings.method == "none" or not settings.control):
                continue
            trained = which == "memory" and settings.method != "none"
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
    from ..core.files import atomic_write

    atomic_write(out / "results.md", lambda tmp: Path(tmp).write_text(md))
    groups = [c for c in COLUMNS] + ["adversarial"]
    series = {label: [m["summary"].get(c, {}).get("f1", 0.0) for c in groups] for label, m in methods.items()}
    bar_plot(out / "f1_by_category.png", groups, series, ylabel="F1 (%)", title=title)
    return format_table(header, rows)
