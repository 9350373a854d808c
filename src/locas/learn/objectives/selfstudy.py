"""Self-study: train the memory so the model answers questions about a text *without* the text.

Plain next-token training stores a text's wording, not answers to questions about it. Self-study
distils the frozen model *with the text in context* into the memory model *without* it: probes
about the segment are made and answered by the teacher (``locas.probes``), and each step trains
on a batch of them, KL(teacher || student) over the teacher's answer tokens, where the student is
the memory model reading only the probe (optionally a short recent window), plus ``ntp_weight`` x
next-token loss on one of the segment's windows.

    >>> objective = make_objective(TrainConfig(objective="selfstudy"),
    ...                            ObjectiveSettings(probes=ProbeConfig(families=("cloze", "template"))))
    >>> stats = objective.update(learner, optimizer, segment, plan)          # makes its own probes
    >>> stats = objective.update(learner, optimizer, segment, plan, examples=cached)
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from ...core.model import token_nll
from ...errors import LocasError
from ...probes.config import ProbeConfig
from ...probes.families import make_probes
from ...probes.teacher import Example, teacher_examples
from ...settings import setting, validate
from ...text.prompts import Prompt
from ...text.sentences import split_chunks
from ..step import backward_step
from .base import Objective
from .window import TeacherTargets, distill_kl


@dataclass
class SelfStudyConfig:
    """How the self-study objective trains on its probes."""

    ntp_weight: float = setting(0.1, "self-study: weight of next-token loss on the raw text in every step",
                                minimum=0)
    batch: int = setting(8, "self-study: probes per optimiser step", flag="--probe-batch", minimum=1)
    student_window: int = setting(0, "self-study: tokens of the chunk's end the student also sees (0 = only the probe)",
                                  minimum=0)

    def __post_init__(self):
        validate(self)

    def to_dict(self) -> dict:
        return asdict(self)


def student_batch(examples: list[Example], window: int, device) -> tuple[torch.Tensor, list[tuple[int, int]]]:
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
    ids, spans = student_batch(examples, student_window, lm.device)
    with lm.use_memory(memory, layers):
        logits = lm.model(input_ids=ids, use_cache=False).logits
    return selfstudy_kl(logits, examples, spans)


class SelfStudy(Objective):
    name = "selfstudy"
    summary = "answer probes about the text without it: distil the model-with-the-text (--probe-* settings)"

    def __init__(self, cfg, settings=None):
        super().__init__(cfg, settings)
        self.study = getattr(settings, "selfstudy", None) or SelfStudyConfig()
        self.probes = getattr(settings, "probes", None) or ProbeConfig()

    def prepare(self, learner, segment) -> list[Example]:
        """Probes made from the segment's text (seeded by ``segment.seed``) and the teacher's answers; the
        teacher is the frozen model (adapters off), in the prompt style of the probes."""
        lm = learner.lm
        style = self.probes.prompt_style
        if style != "qa":
            style = Prompt.resolve_style(lm.tokenizer, style)
        pcfg = ProbeConfig(**{**self.probes.to_dict(), "seed": segment.seed, "prompt_style": style})
        chunks = split_chunks(lm.tokenizer, segment.text, pcfg.chunk_tokens)
        with learner.frozen():
            return teacher_examples(lm, chunks, make_probes(lm, chunks, pcfg, progress=False), pcfg, progress=False)

    def update(self, learner, optimizer, segment, plan, examples: list[Example] | None = None) -> dict:
        """Passes over the probes (``plan``: a pass count or a CPU deadline, which includes making the probes),
        each step a batch of probes plus ``ntp_weight`` x NTP on one of the segment's windows."""
        c0 = time.process_time()
        if examples is None:
            examples = self.prepare(learner, segment)
        if not examples:
            raise LocasError("the selfstudy objective needs probes; none could be made from this text (too short?)")
        prep_cpu_s = time.process_time() - c0
        lm, study = learner.lm, self.study
        kl_sum, steps, skipped = 0.0, 0, 0
        for pick in plan.batches(list(examples), batch=study.batch, shuffle=True):
            optimizer.zero_grad(set_to_none=True)
            ids, spans = student_batch(pick, study.student_window, lm.device)
            kl = selfstudy_kl(learner.logits(ids), pick, spans)
            loss = kl
            if study.ntp_weight and segment.spans:
                s, e = segment.spans[steps % len(segment.spans)]
                window = segment.tokens[s:e][None].to(lm.device)
                loss = kl + study.ntp_weight * token_nll(learner.logits(window), window).mean()
            skipped += int(backward_step(learner, optimizer, loss))
            kl_sum, steps = kl_sum + float(kl.detach()), steps + 1
        return {"probes": len(examples), "kl": kl_sum / max(steps, 1), "steps": steps, "skipped": skipped,
                "prep_cpu_s": prep_cpu_s}
