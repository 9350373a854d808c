"""Self-study: memorise a document so the model answers questions about it *without* the text.

Plain next-token training stores a text's wording, not answers to questions about it. Self-study
distils the frozen model *with the document in context* into the memory model *without* it, on
probes about the document:

1. **Probes** (``make_probes``), per chunk of the document, from five families:
   ``cloze`` (a document sentence with a name/number span hidden), ``template`` (questions built
   from the document's own sentences), and model-written ``question`` / ``instruction`` /
   ``summary`` probes (the base model itself writes them with the chunk in context; sampled,
   deduplicated, chat template when the tokenizer has one). Deterministic under a seed; a cap
   per chunk; cached to JSON next to the run (``ProbeCache``).
2. **Teacher pass** (``teacher_examples``): the frozen base model reads ``chunk + probe``, answers
   greedily, and its top-k logits over its own answer tokens are cached.
3. **Training** (``train_memory``): KL(teacher || student) over those answer tokens, where the
   student is the memory model reading only the probe (optionally a short recent window), plus
   ``ntp_weight`` x next-token loss on the raw text. The same loop runs the ``ntp``, ``sd`` and
   ``mix`` objectives for side-by-side comparisons under one step or wall-time budget.
4. **Recall report** (``recall_report``): on held-out probes (another seed, never trained on),
   answer NLL and exact/F1 with vs without the memory, against the with-context teacher.

    >>> lm = LocasForCausalLM.from_pretrained("smollm2-135m")
    >>> pcfg = ProbeConfig(families=("cloze", "template", "question"), per_chunk=12, seed=0)
    >>> chunks = split_chunks(lm.tokenizer, text, pcfg.chunk_tokens)
    >>> train = teacher_examples(lm, chunks, make_probes(lm, chunks, pcfg), pcfg)
    >>> learner, log = train_memory(lm, tokens, TrainConfig(lr=3e-2), "selfstudy", train, epochs=8)
    >>> report = recall_report(lm, learner.full_memory(), heldout, pcfg)   # dict, see print_recall
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import string
import time
import weakref
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import TrainConfig
from .errors import LocasError
from .objectives import TeacherTargets, distill_kl, teacher_targets
from .train import guarded_step

FAMILIES = ("cloze", "template", "question", "instruction", "summary")
GENERATED = ("question", "instruction", "summary")
OBJECTIVES = ("ntp", "sd", "mix", "selfstudy")

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
    "cloze": "Question: {probe}\nAnswer:",
    "template": "Question: {probe}\nAnswer:",
    "question": "Question: {probe}\nAnswer:",
    "instruction": "Instruction: {probe}\nResponse:",
    "summary": "Instruction: {probe}\nResponse:",
}
CONTEXT_SEPARATOR = "\n\n"


@dataclass
class ProbeConfig:
    """How probes are made and answered."""

    families: tuple = ("cloze", "template", "question")
    chunk_tokens: int = 512  # document chunk the teacher sees per probe
    per_chunk: int = 12  # cap on probes per chunk (families interleaved round-robin)
    samples: int = 4  # sampled generations per chunk per model-written family
    temperature: float = 0.8
    top_p: float = 0.95
    max_probe_tokens: int = 48
    answer_tokens: int = 24  # teacher answer length (summaries get 2x)
    topk: int = 64  # cached teacher logits per answer token
    chat_template: bool = True  # use the tokenizer's chat template (when it has one) to write probes
    seed: int = 0
    templates: dict = field(default_factory=dict)  # overrides of GENERATION_TEMPLATES
    prompt_style: str = "qa"  # qa: "Question: ...\nAnswer:"; plain | chat: the `locas ask` / LoCoMo prompt

    def __post_init__(self):
        self.families = tuple(self.families)
        bad = [f for f in self.families if f not in FAMILIES]
        if bad or not self.families:
            raise LocasError(f"unknown probe family {bad or '(none)'}; choose from {', '.join(FAMILIES)}")
        if self.prompt_style not in ("qa", "plain", "chat"):
            raise LocasError(f"unknown probe prompt style '{self.prompt_style}'; use qa, plain or chat")
        if self.per_chunk < 1 or self.chunk_tokens < 16 or self.answer_tokens < 1:
            raise LocasError("probe settings need per_chunk >= 1, chunk_tokens >= 16, answer_tokens >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


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
        return _norm_key(self.prompt)


@dataclass
class Example:
    """One probe answered by the teacher; token ids, no special tokens."""

    family: str
    context: list[int]  # chunk + separator (teacher only)
    prompt: list[int]  # formatted probe
    answer: list[int]  # the teacher's own greedy answer (incl. the stop token when reached)
    topk_logits: torch.Tensor  # (A, k) teacher logits at the answer positions (top-k)
    topk_index: torch.Tensor  # (A, k) vocabulary ids
    answer_text: str = ""
    reference: str | None = None
    reference_ids: list[int] | None = None
    teacher_nll: float | None = None  # mean NLL of the target answer with the chunk in context
    probe: str = ""  # the unformatted probe text (dedup key for held-out sets)
    student_prefix: list[int] = field(default_factory=list)  # what the student sees before ``prompt``

    @property
    def target(self) -> list[int]:
        """Answer scored in the recall report: the reference, else the teacher's answer."""
        return self.reference_ids if self.reference_ids else self.answer

    @property
    def target_text(self) -> str:
        return self.reference if self.reference is not None else self.answer_text


# ---- text helpers ---------------------------------------------------------------------------
def _encode(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def _norm_key(s: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", s.lower()))


def split_chunks(tokenizer, text: str, chunk_tokens: int = 512) -> list[str]:
    """Paragraph-aligned chunks of at most ~``chunk_tokens`` tokens (long paragraphs are cut)."""
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    if not paras:
        raise LocasError("the text is empty; give a file with some text in it")
    chunks, cur, n = [], [], 0
    for p in paras:
        ids = _encode(tokenizer, p)
        pieces = [p] if len(ids) <= chunk_tokens else [
            tokenizer.decode(ids[i:i + chunk_tokens]) for i in range(0, len(ids), chunk_tokens)]
        for piece in pieces:
            m = len(ids) if len(pieces) == 1 else chunk_tokens
            if cur and n + m > chunk_tokens:
                chunks.append("\n\n".join(cur))
                cur, n = [], 0
            cur.append(piece)
            n += m
    if cur:
        chunks.append("\n\n".join(cur))
    return chunks


_ABBREV = re.compile(r"(?:\b(?:St|Mr|Mrs|Dr|Gen|Col|Capt|Gov|Hon|Rev|Jr|Sr|Co|Lt|Maj|Messrs|vs|No)|\b[A-Z])\.$")


def sentences(text: str) -> list[str]:
    """Sentences of a passage with hard line wraps undone (abbreviations like "St." do not end one)."""
    flat = re.sub(r"\s+", " ", re.sub(r"(?:\*\s*){2,}", " ", text)).strip()
    parts = re.split(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z0-9])", flat)
    merged: list[str] = []
    for p in parts:
        if merged and _ABBREV.search(merged[-1]):
            merged[-1] += " " + p
        else:
            merged.append(p)
    return [s.strip() for s in merged if len(s.split()) >= 5]


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


def _prompt_ids(lm, content: str, use_chat: bool) -> list[int]:
    tok = lm.tokenizer
    if use_chat and getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                      tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    return _encode(tok, content + "\n")


@torch.no_grad()
def generated_probes(lm, chunk: str, index: int, family: str, cfg: ProbeConfig, seed: int) -> list[Probe]:
    """Probes written by the base model with the chunk in context (sampled ``cfg.samples`` times)."""
    if family == "summary":
        words = re.sub(r"\s+", " ", chunk).split()[:8]
        return [Probe("summary", index, f'Summarize the passage that begins "{" ".join(words)}".')]
    template = cfg.templates.get(family, GENERATION_TEMPLATES[family])
    prompt = _prompt_ids(lm, template.format(chunk=chunk), cfg.chat_template)
    tok = lm.tokenizer
    stop = stop_ids(tok)
    generator = torch.Generator().manual_seed(seed)
    with lm.disabled():
        rows = sample_continuations(lm, prompt, cfg.samples, cfg.max_probe_tokens, stop, cfg.temperature,
                                    cfg.top_p, generator)
    probes = []
    for row in rows:
        text = _clean_generated(tok.decode([t for t in row if t not in stop], skip_special_tokens=True), family,
                                chunk)
        if text:
            probes.append(Probe(family, index, text))
    return probes


@torch.no_grad()
def sample_continuations(lm, prompt: list[int], n: int, max_new: int, stop: set[int], temperature: float,
                         top_p: float, generator: torch.Generator) -> list[list[int]]:
    """``n`` nucleus-sampled continuations of ``prompt``; the prompt is prefilled once and shared.

    Each row ends at its first stop token. Deterministic under ``generator`` (CPU sampling).
    """
    cache = _prefill(lm, prompt[:-1])
    cache.batch_repeat_interleave(n)
    x = torch.tensor([prompt[-1:]] * n, device=lm.device)  # (n, 1)
    rows: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    for _ in range(max_new):
        logits = lm.model(input_ids=x, past_key_values=cache, use_cache=True).logits[:, -1].float().cpu()  # (n, V)
        probs = torch.softmax(logits / max(temperature, 1e-5), -1)
        sorted_p, order = probs.sort(-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # the smallest set with mass >= top_p
        sorted_p = sorted_p * keep
        pick = order.gather(-1, torch.multinomial(sorted_p, 1, generator=generator))  # (n, 1)
        for b, t in enumerate(pick[:, 0].tolist()):
            if not done[b]:
                rows[b].append(t)
                done[b] = t in stop
        if all(done):
            break
        x = pick.to(lm.device)
    return rows


def make_probes(lm, chunks: list[str], cfg: ProbeConfig, seed: int | None = None,
                exclude: set[str] | None = None, progress: bool = True) -> list[Probe]:
    """Up to ``cfg.per_chunk`` deduplicated probes per chunk, families interleaved; deterministic in ``seed``."""
    seed = cfg.seed if seed is None else seed
    seen = set(exclude or ())
    probes = []
    for c, chunk in enumerate(tqdm(chunks, desc="probes", disable=not progress, unit="chunk")):
        pools = []
        for f, family in enumerate(cfg.families):
            rng = random.Random(f"{seed}:{c}:{family}")
            if family == "cloze":
                pools.append(cloze_probes(chunk, c, rng))
            elif family == "template":
                pools.append(template_probes(chunk, c, rng))
            else:
                pools.append(generated_probes(lm, chunk, c, family, cfg, seed * 100003 + c * 101 + f))
        kept, depth = [], 0
        while len(kept) < cfg.per_chunk and any(depth < len(p) for p in pools):
            for pool in pools:
                if depth < len(pool) and len(kept) < cfg.per_chunk and pool[depth].key not in seen:
                    seen.add(pool[depth].key)
                    kept.append(pool[depth])
            depth += 1
        probes.extend(kept)
    return probes


# ---- the teacher ----------------------------------------------------------------------------
_STOP_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def stop_ids(tokenizer) -> set[int]:
    """Tokens that end an answer: EOS and every token containing a newline (cached per tokenizer)."""
    if tokenizer not in _STOP_CACHE:
        _STOP_CACHE[tokenizer] = _stop_ids(tokenizer)
    return _STOP_CACHE[tokenizer]


def _stop_ids(tokenizer) -> set[int]:
    ids = {i for i in (tokenizer.eos_token_id,) if i is not None}
    vocab = tokenizer.get_vocab()
    for t, i in vocab.items():
        if "\n" in t or "Ċ" in t:  # byte-level BPE spells the newline Ċ
            ids.add(i)
    return ids


@torch.no_grad()
def greedy_answer(lm, prompt: list[int], max_new: int, stop: set[int], cache=None, topk: int = 0):
    """Greedy continuation of ``prompt`` (after an optional prefilled ``cache``); the first token is never a stop.

    Returns (answer ids, (A, k) top-k logits, (A, k) indices); the caller picks memory on/off.
    """
    from transformers import DynamicCache

    cache = cache if cache is not None else DynamicCache()
    x = torch.tensor([prompt], device=lm.device)
    answer, values, index = [], [], []
    for _ in range(max_new):
        logits = lm.model(input_ids=x, past_key_values=cache, use_cache=True).logits[0, -1].float()  # (V,)
        if topk:
            v, i = logits.topk(min(topk, logits.numel()))
            values.append(v.cpu())
            index.append(i.cpu())
        t = int(logits.argmax())
        if not answer and t in stop and len(stop) < logits.numel():  # never an empty answer: best non-stop token
            masked = logits.clone()
            masked[torch.tensor([i for i in sorted(stop) if i < logits.numel()], dtype=torch.long,
                                device=logits.device)] = float("-inf")
            t = int(masked.argmax())
        answer.append(t)
        if t in stop:
            break
        x = torch.tensor([[t]], device=lm.device)
    if not topk:
        return answer, None, None
    return answer, torch.stack(values), torch.stack(index)


@torch.no_grad()
def _continuation_nll(lm, prefix: list[int], target: list[int], cache=None) -> float:
    """Mean NLL of ``target`` after ``prefix`` (after an optional prefilled cache)."""
    ids = torch.tensor([prefix + target], device=lm.device)
    logits = lm.model(input_ids=ids, past_key_values=cache, use_cache=cache is not None).logits[0].float()  # (T, V)
    pred = logits[len(prefix) - 1: len(prefix) + len(target) - 1]  # (A, V)
    return float(F.cross_entropy(pred, ids[0, len(prefix):]))


def _crop(cache, n: int) -> None:
    """Cut a KV cache back to its first ``n`` tokens (negative crop works across transformers versions)."""
    extra = cache.get_seq_length() - n
    if extra > 0:
        cache.crop(-extra)


def _prefill(lm, context: list[int]):
    from transformers import DynamicCache

    cache = DynamicCache()
    if context:
        lm.model(input_ids=torch.tensor([context], device=lm.device), past_key_values=cache, use_cache=True)
    return cache


@torch.no_grad()
def answer_with_teacher(lm, context: list[int], prompts: list[list[int]], max_new: int | list[int], stop: set[int],
                        topk: int, references: list[list[int] | None] | None = None) -> list[dict]:
    """Frozen base model reads ``context`` once (KV cache), then answers each prompt greedily.

    Returns per prompt: answer ids, (A, k) top-k logits and indices, and the mean NLL of the
    reference (or of its own answer) with the context.
    """
    out = []
    with lm.disabled():
        cache = _prefill(lm, context)
        n = len(context)
        for j, prompt in enumerate(prompts):
            limit = max_new[j] if isinstance(max_new, list) else max_new
            ans, v, i = greedy_answer(lm, prompt, limit, stop, cache=cache, topk=topk)
            _crop(cache, n)
            ref = (references or [None] * len(prompts))[j]
            target = ref or [t for t in ans if t not in stop] or ans
            nll = _continuation_nll(lm, prompt, target, cache=cache)
            _crop(cache, n)
            out.append({"answer": ans, "values": v, "index": i, "nll": nll})
    return out


def teacher_examples(lm, chunks: list[str], probes: list[Probe], cfg: ProbeConfig,
                     progress: bool = True) -> list[Example]:
    """Teacher answers and cached top-k logits for every probe (chunk in context)."""
    tok = lm.tokenizer
    stop = stop_ids(tok)
    by_chunk: dict[int, list[Probe]] = {}
    for p in probes:
        by_chunk.setdefault(p.chunk, []).append(p)
    examples = []
    for c in tqdm(sorted(by_chunk), desc="teacher", disable=not progress, unit="chunk"):
        group = by_chunk[c]
        if cfg.prompt_style == "qa":
            context, student_prefix = _encode(tok, chunks[c] + CONTEXT_SEPARATOR), []
            prompts = [_encode(tok, p.text) for p in group]
        else:  # the prompt of `locas ask` / the LoCoMo harness, with and without the chunk
            from .answer import Prompt

            teacher = Prompt.build(tok, _encode(tok, chunks[c]), cfg.prompt_style)
            context, student_prefix = teacher.prefix_ids, Prompt.build(tok, [], cfg.prompt_style).prefix_ids
            prompts = [teacher.suffix_ids(p.prompt) for p in group]
        refs = [_encode(tok, " " + p.reference) if p.reference else None for p in group]
        limits = [cfg.answer_tokens * (2 if p.family == "summary" else 1) for p in group]
        answers = answer_with_teacher(lm, context, prompts, limits, stop, cfg.topk, refs)
        for p, prompt, ref, a in zip(group, prompts, refs, answers):
            examples.append(Example(p.family, context, prompt, a["answer"], a["values"], a["index"],
                                    tok.decode([t for t in a["answer"] if t not in stop]).strip(),
                                    p.reference, ref, a["nll"], p.prompt, student_prefix))
    return examples


# ---- cache ----------------------------------------------------------------------------------
class ProbeCache:
    """Probes and teacher answers in one JSON file next to the run, keyed by a fingerprint.

    >>> cache = ProbeCache("run/notes.locas.probes.json", fingerprint)
    >>> examples = cache.get("train") or cache.put("train", make_examples())
    """

    def __init__(self, path, fingerprint: dict):
        self.path = Path(path)
        fingerprint = json.loads(json.dumps(fingerprint))  # tuples -> lists, as stored
        self.fingerprint = fingerprint
        self.data = {"fingerprint": fingerprint, "sets": {}}
        if self.path.is_file():
            try:
                old = json.loads(self.path.read_text())
            except (OSError, ValueError):
                old = None
            if old and old.get("fingerprint") == fingerprint:
                self.data = old

    def get(self, name: str) -> list[Example] | None:
        rows = self.data["sets"].get(name)
        if rows is None:
            return None
        return [Example(r["family"], r["context"], r["prompt"], r["answer"], torch.tensor(r["topk_logits"]),
                        torch.tensor(r["topk_index"], dtype=torch.long), r["answer_text"], r["reference"],
                        r["reference_ids"], r["teacher_nll"], r["probe"], r.get("student_prefix", [])) for r in rows]

    def put(self, name: str, examples: list[Example]) -> list[Example]:
        from .eval.report import write_json

        rows = []
        for e in examples:
            r = {k: getattr(e, k) for k in ("family", "context", "prompt", "answer", "answer_text", "reference",
                                            "reference_ids", "teacher_nll", "probe", "student_prefix")}
            r["topk_logits"] = [[round(float(x), 4) for x in row] for row in e.topk_logits.tolist()]
            r["topk_index"] = e.topk_index.tolist()
            rows.append(r)
        self.data["sets"][name] = rows
        write_json(self.path, self.data)
        return examples


def fingerprint(lm, text: str, cfg: ProbeConfig) -> dict:
    from .io import model_fingerprint

    return {"model": str(lm.name), "weights": model_fingerprint(lm), "probe_cfg": cfg.to_dict(),
            "text_sha": hashlib.sha256(text.encode()).hexdigest()[:16]}


def build_probe_sets(lm, text: str, cfg: ProbeConfig, heldout_per_chunk: int = 0, cache_path=None,
                     progress: bool = True) -> tuple[list[Example], list[Example], dict]:
    """Training examples (seed ``cfg.seed``) and held-out ones (seed + 1, disjoint); cached when a path is given.

    Returns (train, heldout, timings in seconds).
    """
    chunks = split_chunks(lm.tokenizer, text, cfg.chunk_tokens)
    cache = ProbeCache(cache_path, fingerprint(lm, text, cfg)) if cache_path else None
    times = {}
    sets = {}
    train_keys: set[str] = set()
    for name, seed, cap in (("train", cfg.seed, cfg.per_chunk), ("heldout", cfg.seed + 1, heldout_per_chunk)):
        key = f"{name}-{cap}"
        if cap <= 0:
            sets[name] = []
            continue
        cached = cache.get(key) if cache else None
        if cached is not None:
            sets[name] = cached
            train_keys |= {_norm_key(e.probe) for e in cached}
            times[name] = 0.0
            continue
        t0 = time.perf_counter()
        sub = ProbeConfig(**{**cfg.to_dict(), "per_chunk": cap})
        probes = make_probes(lm, chunks, sub, seed=seed, exclude=train_keys, progress=progress)
        examples = teacher_examples(lm, chunks, probes, sub, progress=progress)
        train_keys |= {p.key for p in probes}
        times[name] = time.perf_counter() - t0
        sets[name] = cache.put(key, examples) if cache else examples
    if not sets["train"]:
        raise LocasError("no probes could be made from this text (too short?); add text or more families")
    return sets["train"], sets["heldout"], times



# ---- training -------------------------------------------------------------------------------
def _student_batch(examples: list[Example], window: int, device) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Right-padded student inputs (B, T) = [recent window] + prompt + answer, and answer spans."""
    rows, spans = [], []
    for e in examples:
        ctx = e.context[-window:] if window else []
        seq = ctx + e.student_prefix + e.prompt + e.answer
        start = len(seq) - len(e.answer)
        rows.append(seq)
        spans.append((start, start + len(e.answer)))
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r)
    return ids.to(device), spans


def selfstudy_kl(logits: torch.Tensor, examples: list[Example], spans: list[tuple[int, int]]) -> torch.Tensor:
    """KL(teacher || student) averaged over every answer token; logits (B, T, V) of the student batch."""
    student = torch.cat([logits[b, s - 1: e - 1] for b, (s, e) in enumerate(spans)])  # (sum A, V)
    values = torch.cat([e.topk_logits for e in examples]).to(logits.device).float()  # (sum A, k)
    index = torch.cat([e.topk_index for e in examples]).to(logits.device)
    return distill_kl(student, TeacherTargets(torch.log_softmax(values, -1), index))


def distillation_loss(lm, memory, examples: list[Example], student_window: int = 0, layers=None) -> torch.Tensor:
    """Self-study loss of ``memory`` on ``examples`` (student sees probe [+ recent window] only)."""
    ids, spans = _student_batch(examples, student_window, lm.device)
    with lm.use_memory(memory, layers):
        logits = lm.model(input_ids=ids, use_cache=False).logits
    return selfstudy_kl(logits, examples, spans)


def study_step(learner, optimizer, loss: torch.Tensor) -> bool:
    """Backward, optimiser step, norm clipping; a non-finite loss or update is skipped (state restored).

    Returns True when the step was skipped.
    """
    if not torch.isfinite(loss):
        return True
    loss.backward()
    return not guarded_step(learner, optimizer)


@dataclass
class StudyLog:
    objective: str
    steps: int = 0
    wall_s: float = 0.0
    losses: list = field(default_factory=list)
    skipped: int = 0


def train_memory(lm, tokens: torch.Tensor, cfg: TrainConfig, objective: str = "selfstudy",
                 examples: list[Example] | None = None, *, ntp_weight: float = 0.1, batch: int = 8,
                 student_window: int = 0, epochs: int = 1, budget_s: float | None = None,
                 max_steps: int | None = None, start_memory: torch.Tensor | None = None, progress: bool = True,
                 desc: str | None = None, clock=time.perf_counter):
    """Train a Locas memory on a document with one objective; returns (LocasLearner, StudyLog).

    ``ntp``/``sd``/``mix``: one text window per step (``cfg.window_size``; SD teacher reads
    ``cfg.sd_context`` tokens ending at the window, top-k ``cfg.sd_topk``), ``epochs`` passes.
    ``selfstudy``: one batch of ``batch`` probes per step (KL on the teacher's answer tokens) plus
    ``ntp_weight`` x NTP on the next text window, ``epochs`` passes over the probes.
    ``budget_s`` replaces the pass count by a time budget (steps cycle until it is spent), measured
    by ``clock``: wall time by default; ``time.process_time`` counts only this process's CPU time,
    which keeps budgets equal when other work shares the machine.
    """
    from .train import LocasLearner, _teacher_context, lr_at, make_optimizer, window_spans

    objective = objective.lower()
    if objective not in OBJECTIVES:
        raise LocasError(f"unknown objective '{objective}'; choose one of {', '.join(OBJECTIVES)}")
    if objective == "selfstudy" and not examples:
        raise LocasError("the selfstudy objective needs probes; none were made (is the text too short?)")
    tokens = tokens.flatten().cpu()
    spans = window_spans(len(tokens), cfg.window_size)
    torch.manual_seed(cfg.seed)
    learner = LocasLearner(lm, cfg, memory=start_memory)
    learner.begin(tokens, spans[0])
    opt = make_optimizer(learner.parameters(), cfg)
    order = list(range(len(examples or [])))
    random.Random(cfg.seed).shuffle(order)
    per_epoch = math.ceil(len(order) / batch) if objective == "selfstudy" else len(spans)
    total = max_steps or per_epoch * epochs
    if budget_s:
        total = max_steps or 10**9
    teachers: dict = {}
    log = StudyLog(objective)
    use_text = objective != "selfstudy" or ntp_weight > 0
    bar = tqdm(total=None if budget_s else total, desc=desc or f"memorize ({objective})", disable=not progress,
               unit="step")
    t0, c0 = time.perf_counter(), clock()
    step = 0
    while step < total and not (budget_s and clock() - c0 >= budget_s):
        opt.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=lm.device)
        if use_text:
            s, e = spans[step % len(spans)]
            ids = tokens[s:e][None].to(lm.device)
            logits = learner.logits(ids)  # (1, T, V)
            nll = F.cross_entropy(logits[0, :-1].float(), ids[0, 1:])
            if objective in ("sd", "mix"):
                if (s, e) not in teachers:
                    teachers[(s, e)] = teacher_targets(lm, tokens, s, e, _teacher_context(lm, cfg), cfg.sd_topk)
                kl = distill_kl(logits[0, :-1], teachers[(s, e)])
                loss = kl if objective == "sd" else nll + cfg.mix_weight * kl
            else:
                loss = nll * (ntp_weight if objective == "selfstudy" else 1.0)
        if objective == "selfstudy":
            k = (step * batch) % len(order)
            pick = [examples[order[(k + j) % len(order)]] for j in range(min(batch, len(order)))]
            ids, answer_spans = _student_batch(pick, student_window, lm.device)
            loss = loss + selfstudy_kl(learner.logits(ids), pick, answer_spans)
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step, total) if not budget_s else cfg.lr
        log.skipped += int(study_step(learner, opt, loss))
        log.losses.append(float(loss.detach()))
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{log.losses[-1]:.3f}")
    bar.close()
    log.steps, log.wall_s = step, time.perf_counter() - t0
    return learner, log


# ---- recall ---------------------------------------------------------------------------------
def _normalize_answer(s: str) -> list[str]:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    return [w for w in s.split() if w not in ("a", "an", "the")]


def exact_f1(prediction: str, reference: str) -> tuple[float, float]:
    """SQuAD-style exact match and token F1 after normalisation."""
    p, r = _normalize_answer(prediction), _normalize_answer(reference)
    exact = float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if not p or not r:
        return exact, float(p == r)
    if common == 0:
        return exact, 0.0
    prec, rec = common / len(p), common / len(r)
    return exact, 2 * prec * rec / (prec + rec)


@torch.no_grad()
def _student_eval(lm, examples: list[Example], memory, max_new: int, stop: set[int]) -> list[dict]:
    """No-context answer NLL and greedy answer of each example, with ``memory`` (None = base)."""
    rows = []
    ctx = lm.use_memory(memory) if memory is not None else lm.disabled()
    with ctx:
        for e in examples:
            nll = _continuation_nll(lm, e.student_prefix + e.prompt, e.target)
            ans, _, _ = greedy_answer(lm, e.student_prefix + e.prompt, max_new, stop)
            text = lm.tokenizer.decode([t for t in ans if t not in stop]).strip()
            rows.append({"nll": nll, "answer": text, **dict(zip(("exact", "f1"), exact_f1(text, e.target_text)))})
    return rows


def recall_report(lm, memory: torch.Tensor | None, examples: list[Example], cfg: ProbeConfig,
                  base_rows: list[dict] | None = None, progress: bool = True) -> dict:
    """Held-out recall: answer NLL and exact/F1 with vs without the memory, with the teacher as reference.

    ``base_rows`` (from a previous call's ``report["rows"]["base"]``) skips re-evaluating the base model.
    """
    if not examples:
        raise LocasError("no held-out probes to report recall on; raise --heldout-per-chunk")
    stop = stop_ids(lm.tokenizer)
    max_new = cfg.answer_tokens
    bar = tqdm(total=2 if base_rows is None else 1, desc="recall", disable=not progress)
    if base_rows is None:
        base_rows = _student_eval(lm, examples, None, max_new, stop)
        bar.update(1)
    mem_rows = _student_eval(lm, examples, memory, max_new, stop) if memory is not None else base_rows
    bar.update(1)
    bar.close()
    teacher = [exact_f1(e.answer_text, e.target_text) for e in examples]
    groups = {"all": list(range(len(examples)))}
    for j, e in enumerate(examples):
        groups.setdefault(e.family, []).append(j)
    summary = {}
    for g, idx in groups.items():
        def mean(rows, k, idx=idx):
            return sum(rows[j][k] for j in idx) / len(idx)

        t_nll = sum(examples[j].teacher_nll for j in idx) / len(idx)
        b_nll, m_nll = mean(base_rows, "nll"), mean(mem_rows, "nll")
        gap = b_nll - t_nll
        summary[g] = {"n": len(idx), "teacher_nll": t_nll, "base_nll": b_nll, "memory_nll": m_nll,
                      "gap_closed": (b_nll - m_nll) / gap if gap > 0.01 else float("nan"),
                      "teacher_f1": sum(teacher[j][1] for j in idx) / len(idx),
                      "base_exact": mean(base_rows, "exact"), "memory_exact": mean(mem_rows, "exact"),
                      "base_f1": mean(base_rows, "f1"), "memory_f1": mean(mem_rows, "f1")}
    samples = [{"family": e.family, "reference": e.target_text, "teacher": e.answer_text,
                "base": b["answer"], "memory": m["answer"]} for e, b, m in zip(examples, base_rows, mem_rows)]
    return {"summary": summary, "rows": {"base": base_rows, "memory": mem_rows}, "samples": samples}


def recall_table(report: dict) -> tuple[list[str], list[list]]:
    header = ["probes", "n", "NLL ctx", "NLL base", "NLL mem", "gap closed", "F1 ctx", "F1 base", "F1 mem",
              "EM base", "EM mem"]
    rows = [[g, s["n"], s["teacher_nll"], s["base_nll"], s["memory_nll"], s["gap_closed"], s["teacher_f1"],
             s["base_f1"], s["memory_f1"], s["base_exact"], s["memory_exact"]] for g, s in report["summary"].items()]
    return header, rows


# ---- LoCoMo: a TTT loss for the harness (locas.eval.locomo.TTT_LOSSES["SELFSTUDY"]) -----------
LOCOMO_PROBES = ProbeConfig(families=("cloze", "template"), per_chunk=12, chunk_tokens=1024, answer_tokens=16)
LOCOMO_NTP_WEIGHT = 0.1
LOCOMO_BATCH = 8


def _base_model(learner):
    """Context that switches a LoRA learner's adapters off (Locas memories are switched off by the teacher)."""
    from contextlib import nullcontext

    peft_model = getattr(learner, "peft_model", None)
    return peft_model.disable_adapter() if peft_model is not None else nullcontext()


def selfstudy_update(learner, optimizer, job, pcfg: ProbeConfig | None = None) -> dict:
    """Self-study on one LoCoMo session: probes from the session's text, teacher = base model with the
    session in context, student = the learner with the question only; ``steps_per_window`` passes
    over the probes (or passes until the session's CPU budget, which includes making the probes, is
    spent), each step with ``LOCOMO_NTP_WEIGHT`` x NTP on one of the session's windows.
    """
    lm = job.lm
    pcfg = pcfg or LOCOMO_PROBES
    from .answer import Prompt

    style = Prompt.resolve_style(lm.tokenizer, job.settings.prompt_style)  # answer in the harness's own prompt
    pcfg = ProbeConfig(**{**pcfg.to_dict(), "seed": job.cfg.seed * 1000 + job.session.index, "prompt_style": style})
    c0 = time.process_time()
    chunks = split_chunks(lm.tokenizer, job.session.text(), pcfg.chunk_tokens)
    with _base_model(learner):
        examples = teacher_examples(lm, chunks, make_probes(lm, chunks, pcfg, progress=False), pcfg, progress=False)
    prep_cpu_s = time.process_time() - c0
    tokens = job.conv_tokens.tokens
    kl_sum, steps, skipped = 0.0, 0, 0
    for pick in job.schedule(examples, batch=LOCOMO_BATCH, shuffle=True):
        optimizer.zero_grad(set_to_none=True)
        ids, spans = _student_batch(pick, 0, lm.device)
        kl = selfstudy_kl(learner.logits(ids), pick, spans)
        s, e = job.spans[steps % len(job.spans)]
        window = tokens[s:e][None].to(lm.device)
        nll = F.cross_entropy(learner.logits(window)[0, :-1].float(), window[0, 1:])
        skipped += int(study_step(learner, optimizer, kl + LOCOMO_NTP_WEIGHT * nll))
        kl_sum, steps = kl_sum + float(kl.detach()), steps + 1
    return {"probes": len(examples), "kl": kl_sum / max(steps, 1), "steps": steps, "skipped": skipped,
            "prep_cpu_s": prep_cpu_s}
