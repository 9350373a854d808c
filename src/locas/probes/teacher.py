"""The teacher: the frozen base model answers each probe with its chunk in context; its answers and
top-k logits become the self-study objective's training targets.

    >>> examples = teacher_examples(lm, chunks, probes, cfg)          # list[Example]
    >>> examples[0].answer, examples[0].topk_logits.shape             # (A,) ids incl. the stop token, (A, k)
    >>> labelled = label_examples(lm, chunks, probes, cfg)            # references as targets, no teacher run
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..text.decoding import Decoder
from ..text.prompts import Prompt, answer_stop_id, bos_first
from ..text.tokens import encode
from .config import ProbeConfig
from .families import Probe

CONTEXT_SEPARATOR = "\n\n"


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
    aliases: list[str] = field(default_factory=list)  # other accepted forms of the reference (recall benchmark)

    @property
    def target(self) -> list[int]:
        """Answer scored in the recall report: the reference, else the teacher's answer."""
        return self.reference_ids if self.reference_ids else self.answer

    @property
    def target_text(self) -> str:
        return self.reference if self.reference is not None else self.answer_text


@torch.no_grad()
def answer_with_teacher(lm, context: list[int], prompts: list[list[int]], max_new: int | list[int], topk: int,
                        references: list[list[int] | None] | None = None) -> list[dict]:
    """The frozen base model reads ``context`` once (KV cache), then answers every prompt greedily (never
    with an empty answer).

    Returns per prompt: the answer ids (with the stop token when reached), its (A, k) top-k logits
    and indices, and the mean NLL of the reference (else of its own answer) with the context.
    """
    limits = max_new if isinstance(max_new, list) else [max_new] * len(prompts)
    with lm.disabled():
        decoder = Decoder(lm.model, lm.tokenizer, context)
        outs = decoder.generate(prompts, max(limits), topk=topk, min_new_tokens=1)
        answers = []
        for out, limit in zip(outs, limits):  # greedy: the first ``limit`` tokens do not depend on the rest
            ids = out.with_stop[:limit]
            values, index = (out.topk_values[:len(ids)], out.topk_index[:len(ids)]) if topk else (None, None)
            answers.append({"answer": ids, "values": values, "index": index,
                            "text_ids": [t for t in ids if t != out.stop]})
        refs = references or [None] * len(prompts)
        targets = [ref or a["text_ids"] or a["answer"] for ref, a in zip(refs, answers)]
        for a, nll in zip(answers, decoder.nll(prompts, targets)):
            a["nll"] = nll
    return answers


def probe_prompts(tok, chunk: str, group: list[Probe], cfg: ProbeConfig
                  ) -> tuple[list[int], list[int], list[list[int]]]:
    """How the probes of one chunk are shown: (teacher context, student prefix, prompt ids per probe).

    ``qa``: the chunk then ``Question: ...\nAnswer:``; ``plain``/``chat``/``auto``: the prompt of ``locas ask``
    (``Prompt``) with and without the chunk, with ``cfg.instruction``.
    """
    if cfg.prompt_style == "qa":
        prompts = [encode(tok, p.text) for p in group]
        return bos_first(tok, encode(tok, chunk + CONTEXT_SEPARATOR)), bos_first(tok, []), prompts
    style = Prompt.resolve_style(tok, cfg.prompt_style)
    teacher = Prompt.build(tok, encode(tok, chunk), style, cfg.instruction)
    student = Prompt.build(tok, [], style, cfg.instruction)
    return teacher.prefix_ids, student.prefix_ids, [teacher.suffix_ids(p.prompt) for p in group]


def _by_chunk(probes: list[Probe]) -> dict[int, list[Probe]]:
    groups: dict[int, list[Probe]] = {}
    for p in probes:
        groups.setdefault(p.chunk, []).append(p)
    return dict(sorted(groups.items()))


def label_examples(lm, chunks: list[str], probes: list[Probe], cfg: ProbeConfig) -> list[Example]:
    """Probes with known answers as hard-label examples, no teacher run: the target is the reference and the
    token that ends an answer in the prompt style (so a trained memory also learns to stop).

    >>> examples = label_examples(lm, chunks, make_probes(lm, chunks, ProbeConfig()), ProbeConfig())
    """
    tok = lm.tokenizer
    stop = answer_stop_id(tok, "qa" if cfg.prompt_style == "qa" else Prompt.resolve_style(tok, cfg.prompt_style))
    examples = []
    for c, group in _by_chunk([p for p in probes if p.reference]).items():
        context, student_prefix, prompts = probe_prompts(tok, chunks[c], group, cfg)
        for p, prompt in zip(group, prompts):
            ref = encode(tok, " " + p.reference)
            examples.append(Example(p.family, context, prompt, ref + [stop], torch.zeros((0, 0)),
                                    torch.zeros((0, 0), dtype=torch.long), p.reference, p.reference, ref, None,
                                    p.prompt, student_prefix))
    return examples


def teacher_examples(lm, chunks: list[str], probes: list[Probe], cfg: ProbeConfig,
                     progress: bool = True) -> list[Example]:
    """Teacher answers and cached top-k logits for every probe (its chunk in context)."""
    tok = lm.tokenizer
    examples = []
    for c, group in tqdm(_by_chunk(probes).items(), desc="teacher", disable=not progress, unit="chunk"):
        context, student_prefix, prompts = probe_prompts(tok, chunks[c], group, cfg)
        refs = [encode(tok, " " + p.reference) if p.reference else None for p in group]
        limits = [cfg.answer_tokens * (2 if p.family == "summary" else 1) for p in group]
        answers = answer_with_teacher(lm, context, prompts, limits, cfg.topk, refs)
        for p, prompt, ref, a in zip(group, prompts, refs, answers):
            examples.append(Example(p.family, context, prompt, a["answer"], a["values"], a["index"],
                                    tok.decode(a["text_ids"]).strip(), p.reference, ref, a["nll"], p.prompt,
                                    student_prefix))
    return examples
