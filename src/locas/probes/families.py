"""Probes about a text: fill-in-the-blank sentences, questions built from the text's own sentences,
and questions or instructions the model writes itself with the text in context.

Six families: ``fact`` (every name and number of every sentence hidden in turn, each asked in
several wordings: the recall objective's probes), ``cloze`` (a sentence with one name or number
hidden), ``template`` (questions made
from the text's sentences, with the next sentence or the sentence as the answer), and the
model-written ``question`` / ``instruction`` / ``summary`` probes (sampled, deduplicated, kept
only when grounded in the chunk). Deterministic under a seed; capped per chunk.

    >>> chunks = split_chunks(lm.tokenizer, text, cfg.chunk_tokens)
    >>> probes = make_probes(lm, chunks, ProbeConfig(families=("cloze", "template")), seed=0)
    >>> probes[0].family, probes[0].prompt, probes[0].reference, probes[0].text
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..text.decoding import Decoder, Sampling
from ..text.prompts import user_prompt_ids
from ..text.sentences import sentences
from .config import ProbeConfig

# What the model is asked in order to *write* a probe (chunk in context). ``{chunk}`` is the passage.
GENERATION_TEMPLATES = {
    "question": "{chunk}\n\nWrite one question about a specific fact stated in the text above "
                "(a name, a number, a place or an event). Reply with the question only.",
    "instruction": "{chunk}\n\nWrite one instruction that asks the reader to recall a specific detail "
                   "from the text above. Reply with the instruction only.",
}
# How a probe is shown to teacher (after the chunk) and student: the plain format, which SmolLM2
# answers far better than its chat format (issue 8).
ANSWER_FORMATS = {
    "fact": "Question: {probe}\nAnswer:",
    "cloze": "Question: {probe}\nAnswer:",
    "template": "Question: {probe}\nAnswer:",
    "question": "Question: {probe}\nAnswer:",
    "instruction": "Instruction: {probe}\nResponse:",
    "summary": "Instruction: {probe}\nResponse:",
}


def probe_key(s: str) -> str:
    """Normalised text of a probe: the key for deduplication and for keeping held-out sets disjoint."""
    return " ".join(re.findall(r"[a-z0-9]+", s.lower()))


@dataclass
class Probe:
    family: str
    chunk: int  # index into the chunk list
    prompt: str  # the question / instruction (unformatted)
    reference: str | None = None  # known answer (cloze / template), else None

    @property
    def text(self) -> str:
        return ANSWER_FORMATS[self.family].format(probe=self.prompt)

    @property
    def key(self) -> str:
        return probe_key(self.prompt)


_NUMBER = re.compile(r"\b\d[\d,]*(?:\.\d+)?\b")
_NAME = re.compile(r"\b(?:St|Mr|Mrs|Dr|Gen|Col|Capt|Gov)\.\s+[A-Z][a-z]+(?:\s+[A-Z][a-z]+)*"
                   r"|\b[A-Z][a-z]+(?:\s+(?:[A-Z]\.|[A-Z][a-z]+|du|de|la|of(?= [A-Z])))*"
                   r"|\b[A-Z]\.(?:\s*[A-Z]\.)*\s+[A-Z][a-z]+")
_NOT_NAMES = {"The", "A", "An", "It", "He", "She", "They", "We", "I", "In", "On", "At", "This", "That", "There",
              "When", "But", "And", "If", "As", "Mr", "Mrs", "Of", "To", "His", "Her", "Their", "For", "After"}


def _spans(sentence: str) -> list[tuple[int, int, str]]:
    """Candidate (start, end, kind) spans to hide: numbers and capitalised names (not the first word)."""
    out = [(m.start(), m.end(), "number") for m in _NUMBER.finditer(sentence)]
    for m in _NAME.finditer(sentence):
        words = m.group().split()
        while words and words[0] in _NOT_NAMES:
            words = words[1:]
        if not words or m.start() == 0 and len(words) == len(m.group().split()):
            continue
        text = " ".join(words)
        start = sentence.find(text, m.start())
        out.append((start, start + len(text), "name"))
    return [s for s in out if s[0] > 0]


def cloze_probes(chunk: str, index: int, rng: random.Random) -> list[Probe]:
    """A sentence with one number or name hidden, asked as a fill-in-the-blank question."""
    out = []
    for s in sentences(chunk):
        if len(s.split()) > 45:
            continue
        spans = _spans(s)
        if not spans:
            continue
        a, b, _ = rng.choice(spans)
        masked = s[:a] + "____" + s[b:]
        out.append(Probe("cloze", index, f'Fill in the blank: "{masked}"', s[a:b].strip(" ,.")))
    rng.shuffle(out)
    return out


FACT_WORDINGS = ("question", "blank", "complete")
_UNITS = "one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|" \
         "seventeen|eighteen|nineteen"
_TENS = "twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety"
_WORD_NUMBER = re.compile(rf"\b(?:(?:{_TENS})(?:-(?:{_UNITS}))?|{_UNITS}|(?:a|one|two|three|four|five) hundred)\b",
                          re.I)
_WHERE = {"in", "at", "near", "across", "into", "outside", "inside", "beyond"}  # "in Harrow" -> "where"


def fact_spans(sentence: str) -> list[tuple[int, int, str]]:
    """What a fact probe hides: the cloze spans (numbers, names) and numbers written as words."""
    spans = _spans(sentence)
    taken = [(a, b) for a, b, _ in spans]
    for m in _WORD_NUMBER.finditer(sentence):
        if m.start() > 0 and not any(a < m.end() and m.start() < b for a, b in taken):
            spans.append((m.start(), m.end(), "number"))
    return spans


def _wh_phrase(sentence: str, start: int, end: int, kind: str) -> tuple[int, str]:
    """Where a wh-phrase starts and what it is, for hiding ``sentence[start:end]`` in a question."""
    before = sentence[:start].rstrip()
    prev = before.rsplit(" ", 1)[-1].lower() if before else ""
    text = sentence[start:end]
    if kind == "number":
        if re.fullmatch(r"1[0-9]{3}|20[0-9]{2}", text):
            return start, "what year"
        return start, "how many" if re.match(r"\s+[a-z]", sentence[end:]) else "what number"
    if prev in _WHERE:
        return len(before) - len(prev), "where"
    if prev == "by":
        return start, "whom"
    return start, "who" if len(text.split()) >= 2 else "what"


def fact_wordings(sentence: str, start: int, end: int, kind: str, wordings: int = 3) -> list[str]:
    """The first ``wordings`` ways of asking for ``sentence[start:end]``: a question with a wh-phrase in
    its place, a fill-in-the-blank, and the sentence to complete (when the span is not at its start).

    >>> fact_wordings("The mill opened in 1871 in Harrow.", 19, 23, "number")[:2]
    ['The mill opened in what year in Harrow?', 'Fill in the blank: "The mill opened in ____ in Harrow."']
    """
    at, wh = _wh_phrase(sentence, start, end, kind)
    question = (sentence[:at] + wh + sentence[end:]).rstrip(" .!;,") + "?"
    out = {"question": question[0].upper() + question[1:],
           "blank": f'Fill in the blank: "{sentence[:start]}____{sentence[end:]}"'}
    head = sentence[:start].rstrip()
    if len(head.split()) >= 3:
        out["complete"] = f'Complete the sentence: "{head} ..."'
    return [out[w] for w in FACT_WORDINGS[:wordings] if w in out]


def fact_probes(chunk: str, index: int, rng: random.Random, wordings: int = 3) -> list[Probe]:
    """Every number and name of every sentence hidden in turn (so each fact is asked in both directions:
    "X founded Y" hides X, then Y), each asked in ``wordings`` wordings; shuffled."""
    out = []
    for s in sentences(chunk):
        if len(s.split()) > 60:
            continue
        for a, b, kind in fact_spans(s):
            answer = s[a:b].strip(" ,.")
            out.extend(Probe("fact", index, q, answer) for q in fact_wordings(s, a, b, kind, wordings))
    rng.shuffle(out)
    return out


def template_probes(chunk: str, index: int, rng: random.Random) -> list[Probe]:
    """Questions built from the document's own sentences (no model writing involved)."""
    sents = [s for s in sentences(chunk) if len(s.split()) <= 45]
    out = []
    for i, s in enumerate(sents):
        year = re.match(r"(?:In|in) (1[5-9]\d\d|20\d\d),? (.+)", s)
        if year:
            out.append(Probe("template", index, f"In which year: {year.group(2).rstrip('.')}?", year.group(1)))
        names = [t for a, b, k in _spans(s) if k == "name" for t in [s[a:b]]]
        if names:
            name = rng.choice(names)
            out.append(Probe("template", index, f"What does the text say about {name}?", s))
        if i + 1 < len(sents):
            out.append(Probe("template", index, f'What comes right after this sentence: "{s}"?', sents[i + 1]))
    rng.shuffle(out)
    return out


_GENERIC = {"what", "which", "when", "where", "does", "text", "above", "passage", "question", "answer", "about",
            "specific", "fact", "stated", "detail", "recall", "write", "instruction", "reader", "there", "this",
            "that", "with", "from", "have", "were", "they", "their", "would", "could", "should", "first"}


def _clean_generated(text: str, family: str, chunk: str | None = None) -> str | None:
    """First line, list markers and preambles ("...: ") stripped; questions end at "?".

    With ``chunk``, a probe must be grounded: at least two of its content words occur in the chunk
    (drops the generic "What is the question that will be asked next?" that small models write).
    """
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = re.sub(r"^(?:\d+[.)]\s*|[-*]\s*|(?:question|instruction|q|a)\s*:\s*)", "", line, flags=re.I).strip()
    if family == "question":
        if "?" not in line:
            return None
        line = line[: line.index("?") + 1]
        line = line.rsplit(": ", 1)[-1]  # "A question about the text is: What ...?" -> "What ...?"
    if not 3 <= len(line.split()) <= 40:
        return None
    if chunk is not None:
        words = {w for w in re.findall(r"[a-z]{4,}", line.lower()) if w not in _GENERIC}
        if len(words & set(re.findall(r"[a-z]{4,}", chunk.lower()))) < 2:
            return None
    return line


@torch.no_grad()
def generated_probes(lm, chunk: str, index: int, family: str, cfg: ProbeConfig, seed: int) -> list[Probe]:
    """Probes written by the base model with the chunk in context (sampled ``cfg.samples`` times)."""
    if family == "summary":
        words = re.sub(r"\s+", " ", chunk).split()[:8]
        return [Probe("summary", index, f'Summarize the passage that begins "{" ".join(words)}".')]
    template = cfg.templates.get(family, GENERATION_TEMPLATES[family])
    prompt = user_prompt_ids(lm.tokenizer, template.format(chunk=chunk), cfg.chat_template)
    sampling = Sampling(cfg.temperature, cfg.top_p, torch.Generator().manual_seed(seed))
    with lm.disabled():  # the prompt is prefilled once and shared by the samples
        decoder = Decoder(lm.model, lm.tokenizer, prompt[:-1], batch_size=cfg.samples)
        rows = decoder.generate([prompt[-1:]] * cfg.samples, cfg.max_probe_tokens, sampling=sampling)
    probes = []
    for row in rows:
        text = _clean_generated(lm.tokenizer.decode(row.tokens, skip_special_tokens=True), family, chunk)
        if text:
            probes.append(Probe(family, index, text))
    return probes


def make_probes(lm, chunks: list[str], cfg: ProbeConfig, seed: int | None = None,
                exclude: set[str] | None = None, progress: bool = True) -> list[Probe]:
    """Up to ``cfg.per_chunk`` (0: all) deduplicated probes per chunk, families interleaved; deterministic in
    ``seed``."""
    seed = cfg.seed if seed is None else seed
    seen = set(exclude or ())
    probes = []
    for c, chunk in enumerate(tqdm(chunks, desc="probes", disable=not progress, unit="chunk")):
        pools = []
        for f, family in enumerate(cfg.families):
            rng = random.Random(f"{seed}:{c}:{family}")
            if family == "fact":
                pools.append(fact_probes(chunk, c, rng, cfg.wordings))
            elif family == "cloze":
                pools.append(cloze_probes(chunk, c, rng))
            elif family == "template":
                pools.append(template_probes(chunk, c, rng))
            else:
                pools.append(generated_probes(lm, chunk, c, family, cfg, seed * 100003 + c * 101 + f))
        kept, depth = [], 0
        cap = cfg.per_chunk or sum(len(p) for p in pools)
        while len(kept) < cap and any(depth < len(p) for p in pools):
            for pool in pools:
                if depth < len(pool) and len(kept) < cap and pool[depth].key not in seen:
                    seen.add(pool[depth].key)
                    kept.append(pool[depth])
            depth += 1
        probes.extend(kept)
    return probes
