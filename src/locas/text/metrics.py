"""Answer scoring: LoCoMo's own normalisation, token F1, exact match and refusals, and SQuAD's exact/F1.

Follows ``task_eval/evaluation.py`` of snap-research/LoCoMo: lower-case, drop commas and
punctuation, drop the words ``a an the and``, collapse spaces, Porter-stem every token (nltk);
F1 over the stemmed token multisets. Multi-hop (category 1) answers are comma-separated lists:
each gold part takes its best-matching predicted part and the scores are averaged. Open-domain
(category 3) gold answers keep only the text before the first ``;``.

    >>> f1_score("Caroline painted a sunrise", "a sunrise")          # 0.8
    >>> score_answer("7 May 2023", "May 7, 2023", category=2)        # 1.0
    >>> is_refusal("That is not mentioned in the conversation.")    # True
    >>> squad_exact_f1("the Hoe press", "Hoe press")                 # (1.0, 1.0), SQuAD normalisation
    >>> answer_contained("It was built in 1,871.", ["1871"])          # True: a reference's words, in order
"""

from __future__ import annotations

import re
import string
from collections import Counter
from functools import lru_cache

from ..extras import require

MULTI_HOP, TEMPORAL, OPEN_DOMAIN, SINGLE_HOP, ADVERSARIAL = 1, 2, 3, 4, 5
_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the|and)\b")
REFUSALS = ("not mentioned", "no information available")


def normalize_answer(s) -> str:
    """LoCoMo normalisation: lower, no commas/punctuation, no a/an/the/and, single spaces."""
    s = str(s).replace(",", "").lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


@lru_cache(maxsize=1)
def _stemmer():
    require("nltk", "LoCoMo's answer normalisation (F1, exact match, GRPO's reward)")
    from nltk.stem import PorterStemmer

    return PorterStemmer()


@lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    return _stemmer().stem(word)


def answer_tokens(s) -> list[str]:
    return [_stem(w) for w in normalize_answer(s).split()]


def f1_score(prediction, ground_truth) -> float:
    """Token F1 between stemmed, normalised answers (0 when they share no token)."""
    pred, gold = answer_tokens(prediction), answer_tokens(ground_truth)
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def multi_answer_f1(prediction, ground_truth) -> float:
    """Comma-separated parts: mean over gold parts of the best F1 against any predicted part."""
    preds = [p.strip() for p in str(prediction).split(",")]
    golds = [g.strip() for g in str(ground_truth).split(",")]
    return sum(max(f1_score(p, g) for p in preds) for g in golds) / len(golds)


def exact_match(prediction, ground_truth) -> float:
    """1.0 when the normalised, stemmed answers are identical."""
    return float(answer_tokens(prediction) == answer_tokens(ground_truth))


def is_refusal(prediction) -> bool:
    """The answer declines (LoCoMo counts these as correct on adversarial questions)."""
    text = str(prediction).lower()
    return any(r in text for r in REFUSALS)


def gold_answer(answer, category: int) -> str:
    answer = str(answer)
    return answer.split(";")[0].strip() if category == OPEN_DOMAIN else answer


def score_answer(prediction, answer, category: int) -> float:
    """F1 of one prediction in its category's LoCoMo form (categories 1-4)."""
    gold = gold_answer(answer, category)
    return multi_answer_f1(prediction, gold) if category == MULTI_HOP else f1_score(prediction, gold)


def score_item(prediction: str, category: int, answer=None, adversarial_answer=None) -> dict:
    """All metrics of one QA item.

    Categories 1-4: ``f1`` and ``em`` against the gold answer. Category 5 (adversarial): ``f1`` is
    the *negative* F1 against the trap answer (the paper's convention, higher is better),
    ``refused`` is 1 when the answer declines (LoCoMo's convention), ``em`` is ``refused``.
    """
    if category == ADVERSARIAL:
        trap = f1_score(prediction, adversarial_answer) if adversarial_answer is not None else 0.0
        refused = float(is_refusal(prediction))
        return {"f1": -trap, "em": refused, "refused": refused, "trap_f1": trap}
    return {"f1": score_answer(prediction, answer, category),
            "em": exact_match(prediction, gold_answer(answer, category))}


# ---- SQuAD-style scoring (self-study's recall report) ------------------------------------------
def _squad_tokens(s: str) -> list[str]:
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return [w for w in s.split() if w not in ("a", "an", "the")]


def squad_exact_f1(prediction: str, reference: str) -> tuple[float, float]:
    """SQuAD-style exact match and token F1 (lower case, no punctuation or articles; no stemming)."""
    p, r = _squad_tokens(prediction), _squad_tokens(reference)
    exact = float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if not p or not r:
        return exact, float(p == r)
    if common == 0:
        return exact, 0.0
    prec, rec = common / len(p), common / len(r)
    return exact, 2 * prec * rec / (prec + rec)


def answer_contained(prediction: str, references) -> bool:
    """Whether any reference (LoCoMo-normalised) occurs as a whole-word run in the normalised prediction."""
    pred = f" {normalize_answer(prediction)} "
    return any(ref and f" {ref} " in pred for ref in (normalize_answer(r) for r in references))
