"""MMLU accuracy by letter NLL, batched with a shared few-shot prefix per subject.

Prompt (Hendrycks et al.): ``The following are multiple choice questions (with answers) about
<subject>.\\n\\n`` then ``shots`` dev examples ``<question>\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer: X\\n\\n``,
then the test question ending in ``Answer:``. The prediction is the letter with the lowest NLL
of ``" A" .. " D"`` as the next token. The prefix (header + shots) is run once per subject; its
key/value cache is copied across a left-padded batch of questions (explicit position ids keep
every question's positions exactly as if it were run alone), and only the last position's
logits are computed. ``model`` is anything called like a transformers causal LM: ``lm.model``
with a memory installed, a peft model, or a fused dense checkpoint.

    >>> qs = load_questions(limit_per_subject=8)
    >>> with lm.use_memory(memory):
    ...     report = evaluate_mmlu(lm.model, lm.tokenizer, qs, shots=5)
    >>> report["micro"], report["macro"], report["categories"]["STEM"]["acc"]
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..core.kvcache import cache_arg, has_sliding_window, returned_cache
from ..data.mmlu import LETTERS, Question, available_subjects, categories, load_questions
from ..errors import LocasError
from ..settings import setting, validate

HEADER = "The following are multiple choice questions (with answers) about {}.\n\n"


@dataclass
class MMLUConfig:
    """Which MMLU questions are asked, and how (the command's --seed draws the subset)."""

    subjects: str | None = setting(None, "comma-separated MMLU subjects (default: all 57)")
    limit_per_subject: int = setting(0, "a seeded stratified subset of N questions per subject (0 = all questions)",
                                     minimum=0)
    shots: int = setting(5, "few-shot examples from the dev split", minimum=0, maximum=5)
    batch_size: int = setting(8, "MMLU questions per forward pass", minimum=1)

    def __post_init__(self):
        validate(self)

    @property
    def subject_list(self) -> list[str] | None:
        return [s.strip() for s in self.subjects.split(",") if s.strip()] if self.subjects else None

    def questions(self, data=None, seed: int = 0) -> list[Question]:
        """The test questions these settings ask."""
        return load_questions(self.subject_list, limit_per_subject=self.limit_per_subject or None, seed=seed,
                              data=data)



def shot_pool(questions: list[Question], shots: int, data=None) -> list[Question]:
    """Dev-split examples of the subjects of ``questions`` that have a dev split (none for 0-shot)."""
    if not shots:
        return []
    with_dev = set(available_subjects(data, "dev"))
    return load_questions(sorted({q.subject for q in questions} & with_dev), split="dev", data=data)


def format_question(q: Question, answer: bool = False) -> str:
    text = q.question.strip() + "".join(f"\n{L}. {c}" for L, c in zip(LETTERS, q.choices)) + "\nAnswer:"
    return text + f" {LETTERS[q.answer]}\n\n" if answer else text


def prefix_text(subject: str, shots: list[Question]) -> str:
    return HEADER.format(subject.replace("_", " ")) + "".join(format_question(q, answer=True) for q in shots)


def letter_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """(shared tokens appended after ``Answer:``, the 4 letter token ids that end the continuation)."""
    base = tokenizer("\nAnswer:", add_special_tokens=False)["input_ids"]
    conts = []
    for L in LETTERS:
        full = tokenizer(f"\nAnswer: {L}", add_special_tokens=False)["input_ids"]
        if full[: len(base)] != base:
            raise LocasError("this tokenizer merges 'Answer:' with the letter; letter-NLL scoring needs them apart")
        conts.append(full[len(base):])
    shared = conts[0][:-1]
    if any(len(c) != len(conts[0]) or c[:-1] != shared for c in conts) or len({c[-1] for c in conts}) != 4:
        raise LocasError("the answer letters A-D are not single distinct tokens for this tokenizer; "
                         "letter-NLL scoring cannot be used")
    return shared, [c[-1] for c in conts]


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def _prefix_cache(model, ids: list[int]):
    dev = _device(model)
    x = torch.tensor([ids], device=dev)  # (1, P)
    return returned_cache(model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=True))


@torch.no_grad()
def _score_batch(model, cache, prefix_len: int, suffixes: list[list[int]], letter_ids: list[int],
                 pad_id: int) -> torch.Tensor:
    """Letter log-probs (B, 4) for suffixes continuing a shared prefix of ``prefix_len`` tokens."""
    dev = _device(model)
    B, S = len(suffixes), max(len(s) for s in suffixes)
    ids = torch.full((B, S), pad_id, dtype=torch.long)  # left padded
    mask = torch.zeros((B, prefix_len + S), dtype=torch.long)
    mask[:, :prefix_len] = 1
    pos = torch.zeros((B, S), dtype=torch.long)
    for b, s in enumerate(suffixes):
        ids[b, S - len(s):] = torch.tensor(s)
        mask[b, prefix_len + S - len(s):] = 1
        pos[b, S - len(s):] = torch.arange(prefix_len, prefix_len + len(s))
    if cache is not None:
        cache = copy.deepcopy(cache)
        cache.batch_repeat_interleave(B)
    out = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                use_cache=cache is not None, logits_to_keep=1, **cache_arg(cache))
    logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (B, V)
    return logp[:, letter_ids].cpu()  # (B, 4)


def score_questions(model, tokenizer, questions: list[Question], shots: int = 5, dev: list[Question] | None = None,
                    batch_size: int = 8, progress: bool = True, desc: str = "mmlu") -> list[dict]:
    """One record per question: subject, index, answer, pred, letter log-probs (4,)."""
    if not questions:
        raise LocasError("no MMLU questions to score; check --subjects and --limit-per-subject")
    shared, letter_ids = letter_tokens(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if has_sliding_window(model):  # windowed layers would count a padded row's padding in its window
        batch_size = 1
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    by_subject: dict[str, list[Question]] = defaultdict(list)
    for q in questions:
        by_subject[q.subject].append(q)
    shot_pool: dict[str, list[Question]] = defaultdict(list)
    for q in dev or []:
        shot_pool[q.subject].append(q)
    n_batches = sum(math.ceil(len(v) / batch_size) for v in by_subject.values())
    bar = tqdm(total=n_batches, desc=desc, disable=not progress, unit="batch", dynamic_ncols=True)
    records = []
    try:
        for subject, qs in by_subject.items():
            examples = shot_pool[subject][:shots]
            if len(examples) < shots:
                raise LocasError(f"{shots}-shot needs {shots} dev examples for '{subject}', found {len(examples)}")
            prefix = tokenizer(prefix_text(subject, examples))["input_ids"]
            cache = _prefix_cache(model, prefix)
            suffixes = [tokenizer(format_question(q), add_special_tokens=False)["input_ids"] + shared for q in qs]
            longest = len(prefix) + max(len(x) for x in suffixes)
            if limit and longest > limit:
                raise LocasError(f"{subject}: a {shots}-shot prompt has {longest} tokens, more than the model's "
                                 f"{limit}; use fewer --shots")
            order = sorted(range(len(qs)), key=lambda i: len(suffixes[i]))
            correct = 0
            for lo in range(0, len(order), batch_size):
                chunk = order[lo:lo + batch_size]
                logp = _score_batch(model, cache, len(prefix), [suffixes[i] for i in chunk], letter_ids, pad_id)
                for i, lp in zip(chunk, logp):
                    pred = int(lp.argmax())
                    correct += pred == qs[i].answer
                    records.append({"subject": subject, "index": qs[i].index, "answer": qs[i].answer,
                                    "pred": pred, "logp": [round(float(v), 6) for v in lp]})
                bar.update(1)
                bar.set_postfix(subject=subject[:18], acc=f"{correct / max(1, lo + len(chunk)):.2f}")
    finally:
        bar.close()
    return records


def aggregate(records: list[dict], cats: dict[str, str] | None = None) -> dict:
    """Accuracy per subject, per category (micro within it) and overall (macro over subjects, micro)."""
    cats = cats or {}
    per_subject: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    per_cat: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        hit = int(r["pred"] == r["answer"])
        for table, key in ((per_subject, r["subject"]), (per_cat, cats.get(r["subject"], "unknown"))):
            table[key][0] += hit
            table[key][1] += 1
    subjects = {s: {"acc": c / n, "correct": c, "n": n} for s, (c, n) in sorted(per_subject.items())}
    total_c, total_n = sum(c for c, _ in per_subject.values()), sum(n for _, n in per_subject.values())
    return {
        "n": total_n,
        "correct": total_c,
        "micro": total_c / max(total_n, 1),
        "macro": sum(v["acc"] for v in subjects.values()) / max(len(subjects), 1),
        "categories": {k: {"acc": c / n, "correct": c, "n": n} for k, (c, n) in sorted(per_cat.items())},
        "subjects": subjects,
    }


def compare(records: list[dict], reference: list[dict]) -> dict:
    """Paired change against a reference run on the same questions (e.g. the base model).

    ``agreement``: share of identical predictions; ``letter_kl``: mean KL(ref || this) over the
    4-letter distributions; ``flips_to_correct`` / ``flips_to_wrong``: answers gained / lost.
    """
    ref = {(r["subject"], r["index"]): r for r in reference}
    same = gained = lost = 0
    kl = 0.0
    for r in records:
        b = ref.get((r["subject"], r["index"]))
        if b is None:
            raise LocasError("the two MMLU runs did not score the same questions; use the same subset")
        same += r["pred"] == b["pred"]
        gained += r["pred"] == r["answer"] and b["pred"] != b["answer"]
        lost += r["pred"] != r["answer"] and b["pred"] == b["answer"]
        p = torch.log_softmax(torch.tensor(b["logp"], dtype=torch.float64), 0)
        q = torch.log_softmax(torch.tensor(r["logp"], dtype=torch.float64), 0)
        kl += float((p.exp() * (p - q)).sum())
    n = max(len(records), 1)
    return {"agreement": same / n, "letter_kl": kl / n, "flips_to_correct": gained, "flips_to_wrong": lost}


def evaluate_mmlu(model, tokenizer, questions: list[Question] | None = None, shots: int = 5, *, data=None,
                  batch_size: int = 8, progress: bool = True, desc: str = "mmlu") -> dict:
    """Score ``questions`` (default: the whole test set) and aggregate; includes the per-question records."""
    questions = questions if questions is not None else load_questions(data=data)
    records = score_questions(model, tokenizer, questions, shots, shot_pool(questions, shots, data), batch_size,
                              progress, desc)
    return {"shots": shots, **aggregate(records, categories(data)), "records": records}
