"""LoCoMo (Maharana et al., ACL 2024; CC BY-NC 4.0): long conversations with QA items.

``locomo/locomo10.json`` in the data directory (canonical download when it is missing): 10
conversations of 19-32 dated sessions between two speakers and 1,986 questions. Category ids
are pinned here as the benchmark's own evaluation code uses them.

    >>> convs = load_locomo()                                # list[Conversation], file order
    >>> conv = get_conversation("conv-26")
    >>> [s.date for s in conv.chronological()][:2]           # sessions sorted by date-time
    >>> conv.qa[0].question, conv.qa[0].answer, conv.qa[0].category_name
    >>> text = conv.text()                                   # whole log, LoCoMo's prompt format
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ..errors import LocasError
from .paths import data_dir

LOCOMO_URL = "https://raw.githubusercontent.com/snap-research/LoCoMo/main/data/locomo10.json"
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
CATEGORY_ORDER = (4, 1, 2, 3, 5)  # single-hop, multi-hop, temporal, open-domain, adversarial (paper order)


@dataclass
class Turn:
    speaker: str
    text: str
    dia_id: str = ""
    caption: str | None = None  # BLIP caption of a shared image

    def render(self) -> str:
        """One line in LoCoMo's prompt format."""
        shared = f" and shared {self.caption}." if self.caption else ""
        return f'{self.speaker} said, "{self.text}"{shared}\n'


@dataclass
class Session:
    index: int  # the number in ``session_<index>``
    date: str  # as written, e.g. "1:56 pm on 8 May, 2023"
    turns: list[Turn]

    @property
    def when(self) -> datetime | None:
        return parse_date(self.date)

    def text(self) -> str:
        return f"DATE: {self.date}\nCONVERSATION:\n" + "".join(t.render() for t in self.turns) + "\n"


@dataclass
class QAItem:
    question: str
    category: int
    answer: str | None = None  # absent on most adversarial items
    adversarial_answer: str | None = None  # the trap answer of category 5
    evidence: list[str] = field(default_factory=list)

    @property
    def category_name(self) -> str:
        return CATEGORIES[self.category]

    @property
    def evidence_sessions(self) -> set[int]:
        """Session numbers the evidence points to: ``["D1:3", "D4:2"]`` -> ``{1, 4}``."""
        return {int(n) for e in self.evidence for n in re.findall(r"D(\d+):", e)}


@dataclass
class Conversation:
    sample_id: str
    speakers: tuple[str, str]
    sessions: list[Session]  # in file order
    qa: list[QAItem]

    def chronological(self) -> list[Session]:
        """Sessions sorted by date-time (undated or unparsable ones keep their file position)."""
        keyed, last = [], datetime.min
        for s in self.sessions:
            last = s.when or last
            keyed.append((last, s.index, s))
        return [s for _, _, s in sorted(keyed, key=lambda k: (k[0], k[1]))]

    def text(self) -> str:
        return "".join(s.text() for s in self.chronological())

    def first_sessions(self, k: int) -> Conversation:
        """The conversation cut to its ``k`` chronologically first sessions, with only the questions
        whose evidence lies entirely in them (questions without evidence are dropped).

            >>> get_conversation("conv-30").first_sessions(6)  # 6 sessions, 44 questions
        """
        if k < 1:
            raise LocasError("--max-sessions must be at least 1")
        kept = self.chronological()[:k]
        keep = {s.index for s in kept}
        qa = [q for q in self.qa if q.evidence_sessions and q.evidence_sessions <= keep]
        return Conversation(self.sample_id, self.speakers, sorted(kept, key=lambda s: s.index), qa)

    @property
    def num_turns(self) -> int:
        return sum(len(s.turns) for s in self.sessions)


_DATE_FORMATS = ("%I:%M %p on %d %B, %Y", "%I:%M %p on %d %b, %Y", "%I:%M %p on %B %d, %Y")


def parse_date(text: str) -> datetime | None:
    text = " ".join(str(text).split())
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    return None


def parse_conversation(raw: dict) -> Conversation:
    """One entry of ``locomo10.json`` -> ``Conversation``."""
    try:
        conv = raw["conversation"]
        sessions = []
        for key in conv:
            m = re.fullmatch(r"session_(\d+)", key)
            if m and conv[key]:
                turns = [Turn(t["speaker"], t["text"], t.get("dia_id", ""), t.get("blip_caption"))
                         for t in conv[key]]
                sessions.append(Session(int(m.group(1)), conv.get(f"{key}_date_time", ""), turns))
        sessions.sort(key=lambda s: s.index)
        qa = [QAItem(str(q["question"]), int(q["category"]),
                     None if q.get("answer") is None else str(q["answer"]),
                     None if q.get("adversarial_answer") is None else str(q["adversarial_answer"]),
                     list(q.get("evidence", []))) for q in raw["qa"]]
        return Conversation(str(raw["sample_id"]), (conv["speaker_a"], conv["speaker_b"]), sessions, qa)
    except (KeyError, TypeError, ValueError) as exc:
        raise LocasError(f"LoCoMo entry {raw.get('sample_id', '?') if isinstance(raw, dict) else '?'} is "
                         f"malformed (missing {exc}); use the original locomo10.json") from None


def locomo_path(data=None) -> Path:
    """``<data dir>/locomo/locomo10.json``, else a cached canonical download."""
    try:
        local = data_dir(data) / "locomo" / "locomo10.json"
        if local.is_file():
            return local
    except LocasError:
        local = None
    cache = Path(os.path.expanduser("~/.cache/locas/locomo/locomo10.json"))
    if not cache.is_file():
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with urllib.request.urlopen(LOCOMO_URL, timeout=20) as r:
                payload = r.read()
            json.loads(payload)
            tmp = cache.with_suffix(".tmp")
            tmp.write_bytes(payload)
            os.replace(tmp, cache)
        except (OSError, ValueError):
            where = local.parent if local else "the data directory"
            raise LocasError(f"locomo10.json is not in {where} and cannot be downloaded here; "
                             "pass --data-dir with a locomo/ folder") from None
    return cache


def load_locomo(data=None, path=None) -> list[Conversation]:
    """All conversations in file order."""
    path = Path(path) if path else locomo_path(data)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LocasError(f"cannot read LoCoMo file '{path}' ({exc}); re-download locomo10.json") from None
    if not isinstance(raw, list):
        raise LocasError(f"'{path}' is not a LoCoMo file (expected a list of conversations)")
    return [parse_conversation(r) for r in raw]


def get_conversation(sample_id: str, data=None, conversations: list[Conversation] | None = None) -> Conversation:
    convs = conversations if conversations is not None else load_locomo(data)
    for c in convs:
        if c.sample_id == sample_id or c.sample_id == f"conv-{sample_id}":
            return c
    raise LocasError(f"unknown conversation '{sample_id}'; choose from {', '.join(c.sample_id for c in convs)}")
