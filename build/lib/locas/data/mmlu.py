"""MMLU from the data directory: ``mmlu/{test,dev}/<subject>_{test,dev}.csv`` + ``subject_categories.json``.

CSV header ``question,choice0,choice1,choice2,choice3,answer`` with ``answer`` 0..3 (the HF
``cais/mmlu`` layout). A subset is *stratified*: the same number of questions from every subject,
drawn with a fixed seed, so every method is scored on identical questions.

    >>> qs = load_questions(subjects=None, split="test", limit_per_subject=8, seed=0)   # 57 x 8
    >>> qs[0].subject, qs[0].question, qs[0].choices, qs[0].answer
    >>> dev = load_questions(split="dev")                                                # 5 per subject
    >>> categories()["abstract_algebra"]                                                 # 'STEM'
"""

from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from ..errors import LocasError
from .paths import data_dir

LETTERS = ("A", "B", "C", "D")
FIELDS = ("question", "choice0", "choice1", "choice2", "choice3", "answer")


@dataclass(frozen=True)
class Question:
    subject: str
    question: str
    choices: tuple[str, str, str, str]
    answer: int  # 0..3
    index: int = 0  # row in the subject's CSV


def mmlu_dir(data: str | os.PathLike | None = None) -> Path:
    """``<data>/mmlu``; ``data`` may also point straight at an MMLU directory (with test/ and dev/)."""
    if data is not None and (Path(data) / "test").is_dir():
        return Path(data)
    root = data_dir(data) / "mmlu"
    if not (root / "test").is_dir():
        raise LocasError(f"no MMLU data in {root} (expected test/ and dev/ CSVs); pass --data-dir")
    return root


def categories(data: str | os.PathLike | None = None) -> dict[str, str]:
    """subject -> category (STEM / humanities / social sciences / other)."""
    path = mmlu_dir(data) / "subject_categories.json"
    if not path.is_file():
        return {}
    return {s: v["category"] for s, v in json.loads(path.read_text()).items()}


def available_subjects(data: str | os.PathLike | None = None, split: str = "test") -> list[str]:
    return sorted(p.name[: -len(f"_{split}.csv")] for p in (mmlu_dir(data) / split).glob(f"*_{split}.csv"))


def read_csv(path: str | os.PathLike, subject: str) -> list[Question]:
    """Parse one MMLU-format CSV; clear errors for missing columns or bad answers."""
    path = Path(path)
    if not path.is_file():
        raise LocasError(f"MMLU file '{path}' not found; check --data-dir and the subject name")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in FIELDS if c not in (reader.fieldnames or [])]
        if missing:
            raise LocasError(f"'{path}' lacks column(s) {', '.join(missing)}; expected header {','.join(FIELDS)}")
        out = []
        for i, row in enumerate(reader):
            ans = str(row["answer"]).strip()
            answer = LETTERS.index(ans) if ans in LETTERS else int(ans) if ans.isdigit() else -1
            if not 0 <= answer <= 3:
                raise LocasError(f"'{path}' row {i + 2}: answer '{ans}' is not 0-3 or A-D")
            choices = tuple(str(row[f"choice{k}"]) for k in range(4))
            out.append(Question(subject, str(row["question"]), choices, answer, i))
    return out


def load_questions(subjects: list[str] | None = None, split: str = "test", limit_per_subject: int | None = None,
                   seed: int = 0, data: str | os.PathLike | None = None) -> list[Question]:
    """Questions of ``subjects`` (default: all); ``limit_per_subject`` draws a seeded stratified subset."""
    root = mmlu_dir(data)
    known = available_subjects(root, split)
    subjects = known if not subjects else list(subjects)
    unknown = [s for s in subjects if s not in known]
    if unknown:
        raise LocasError(f"unknown MMLU subject(s) {', '.join(unknown)}; available: {', '.join(known[:5])}, ... "
                         f"({len(known)} in {root / split})")
    out = []
    for s in subjects:
        qs = read_csv(root / split / f"{s}_{split}.csv", s)
        if limit_per_subject is not None and len(qs) > limit_per_subject:
            picks = sorted(random.Random(f"{seed}:{s}").sample(range(len(qs)), limit_per_subject))
            qs = [qs[i] for i in picks]
        out.extend(qs)
    return out


def stratified_subjects(per_category: int, seed: int = 0, data: str | os.PathLike | None = None) -> list[str]:
    """``per_category`` subjects drawn (seeded) from each of the four categories, sorted."""
    by_cat: dict[str, list[str]] = {}
    for s, c in sorted(categories(data).items()):
        by_cat.setdefault(c, []).append(s)
    if not by_cat:
        raise LocasError("no subject_categories.json in the MMLU directory; pass --subjects instead")
    picks = []
    for c, subjects in sorted(by_cat.items()):
        picks += random.Random(f"{seed}:{c}").sample(subjects, min(per_category, len(subjects)))
    return sorted(picks)
