"""The teacher: the frozen base model answers each probe with its chunk in context; its answers and
top-k logits become the self-study objective's training targets.

    >>> examples = teacher_examples(lm, chunks, probes, cfg)          # list[Example]
    >>> examples[0].answer, examples[0].topk_logits.shape             # (A,) ids incl. the stop token, (A, k)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..text.decoding import Decoder
from ..text.prompts import Prompt
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


def teacher_examples(lm, chunks: list[str], probes: list[Probe], cfg: ProbeConfig,
                     progress: bool = True) -> list[Example]:
    """Teacher answers and cached top-k logits for every probe (its chunk in context)."""
    tok = lm.tokenizer
    by_chunk: dict[int, list[Probe]] = {}
    for p in probes:
        by_chunk.setdefault(p.chunk, []).append(p)
    examples = []
    for c in tqdm(sorted(by_chunk), desc="teacher", disable=not progress, unit="chunk"):
        group = by_chunk[c]
        if cfg.prompt_style == "qa":
            context, student_prefix = encode(tok, chunks[c] + CONTEXT_SEPARATOR), []
            prompts = [encode(tok, p.text) for p in group]
        else:  # the prompt of `locas ask` / the LoCoMo harness, with and without the chunk
            teacher = Prompt.build(tok, encode(tok, chunks[c]), cfg.prompt_style)
            context, student_prefix = teacher.prefix_ids, Prompt.build(tok, [], cfg.prompt_style).prefix_ids
            prompts = [teacher.suffix_ids(p.prompt) for p in group]
        refs = [encode(tok, " " + p.reference) if p.reference else None for p in group]
        limits = [cfg.answer_tokens * (2 if p.family == "summary" else 1) for p in group]
        answers = answer_with_teacher(lm, context, prompts, limits, cfg.topk, refs)
        for p, prompt, ref, a in zip(group, prompts, refs, answers):
            examples.append(Example(p.family, context, prompt, a["answer"], a["values"], a["index"],
                                    tok.decode(a["text_ids"]).strip(), p.reference, ref, a["nll"], p.prompt,
                                    student_prefix))
    return examples
