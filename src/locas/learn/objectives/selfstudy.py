"""Self-study: train the memory so the model answers questions about a text *without* the text.

Plain next-token training stores a text's wording, not answers to questions about it. Self-study
trains the memory model, reading only a probe about the text (no text in the prompt), to give the
probe's answer: by default (``loss="label"``) the reference answer of ``fact`` probes (every name
and number of every sentence hidden in turn, asked in three wordings, in the prompt format of
``locas ask``), cross-entropy on the answer and its stop token; with ``loss="kl"`` it distils the
frozen model *with the text in context* instead (KL(teacher || student) over the teacher's own
answer tokens, top-k). Each step is a batch of left-padded probes (logits only at the answer
positions) plus ``ntp_weight`` x next-token loss on one of the segment's windows. docs/RECALL.md
measures the levers.

    >>> objective = make_objective(TrainConfig(objective="selfstudy"))        # fact probes, hard labels
    >>> objective = make_objective(TrainConfig(objective="selfstudy"), ObjectiveSettings(
    ...     selfstudy=SelfStudyConfig(loss="kl"), probes=ProbeConfig(families=("cloze", "template"))))
    >>> stats = objective.update(learner, optimizer, segment, plan)          # makes its own probes
    >>> stats = objective.update(learner, optimizer, segment, plan, examples=cached)
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ...core.head import token_nll
from ...errors import LocasError
from ...probes.config import ProbeConfig
from ...probes.families import make_probes
from ...probes.teacher import Example, label_examples, teacher_examples
from ...settings import setting, validate
from ...text.sentences import split_chunks
from ..silence import LayerInputs, off_text, relative_energy
from ..step import backward_step
from .base import Objective
from .window import TeacherTargets, distill_kl

LOSSES = ("label", "kl")
OFF_ROW = 128  # tokens per sample of the silence term's off-text


@dataclass
class SelfStudyConfig:
    """How the self-study objective trains on its probes."""

    loss: str = setting("label", "self-study: label = cross-entropy on the probes' reference answers (no teacher "
                                 "run); kl = distil the model-with-the-text's answers (top-k KL)",
                        flag="--probe-loss", choices=LOSSES)
    ntp_weight: float = setting(0.3, "self-study: weight of next-token loss on the raw text in every step",
                                minimum=0)
    batch: int = setting(8, "self-study: probes per optimiser step", flag="--probe-batch", minimum=1)
    student_window: int = setting(0, "self-study: tokens of the chunk's end the student also sees (0 = only the probe)",
                                  minimum=0)
    silence_weight: float = setting(0.0, "self-study: weight of the silence term in every step, the memory's output "
                                         "energy relative to the MLP's on the model's own samples (keeps a Locas "
                                         "memory quiet off its text; 0 = off)", minimum=0)
    silence_tokens: int = setting(512, "self-study: tokens of the model's own samples the silence term is measured on "
                                       "(rows of 128, drawn once)", minimum=1)

    def __post_init__(self):
        validate(self)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StudentBatch:
    """Left-padded student rows [recent window] + prefix + prompt + answer, every answer ending at the last column."""

    ids: torch.Tensor  # (B, W)
    attention_mask: torch.Tensor  # (B, W)
    position_ids: torch.Tensor  # (B, W)
    lengths: list[int]  # answer tokens per row (A_b)

    @property
    def keep(self) -> int:
        """Logit positions that predict every answer token: the last max(A_b) + 1 columns."""
        return max(self.lengths) + 1

    def inputs(self) -> dict:
        return {"attention_mask": self.attention_mask, "position_ids": self.position_ids,
                "logits_to_keep": self.keep}

    def answer_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, keep, V) kept logits -> (sum A_b, V), the predictions of every answer token in order."""
        K = logits.shape[1]
        return torch.cat([logits[b, K - a - 1: K - 1] for b, a in enumerate(self.lengths)])


def student_batch(examples: list[Example], window: int, device, pad_id: int = 0) -> StudentBatch:
    """The student's view of ``examples`` (no chunk, only the probe after its prefix), left-padded."""
    rows = [(e.context[-window:] if window else []) + e.student_prefix + e.prompt + e.answer for e in examples]
    B, W = len(rows), max(len(r) for r in rows)
    ids = torch.full((B, W), pad_id, dtype=torch.long)
    mask = torch.zeros((B, W), dtype=torch.long)
    pos = torch.zeros((B, W), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, W - len(r):] = torch.tensor(r)
        mask[b, W - len(r):] = 1
        pos[b, W - len(r):] = torch.arange(len(r))
    return StudentBatch(ids.to(device), mask.to(device), pos.to(device), [len(e.answer) for e in examples])


def selfstudy_kl(answer_logits: torch.Tensor, examples: list[Example]) -> torch.Tensor:
    """KL(teacher || student) averaged over every answer token; answer_logits (sum A, V)."""
    values = torch.cat([e.topk_logits for e in examples]).to(answer_logits.device).float()  # (sum A, k)
    index = torch.cat([e.topk_index for e in examples]).to(answer_logits.device)
    return distill_kl(answer_logits, TeacherTargets(torch.log_softmax(values, -1), index))


def label_loss(answer_logits: torch.Tensor, examples: list[Example]) -> torch.Tensor:
    """Cross-entropy of every answer token (the reference and its stop token); answer_logits (sum A, V)."""
    target = torch.tensor([t for e in examples for t in e.answer], device=answer_logits.device)
    return F.cross_entropy(answer_logits.float(), target)


def probe_loss(logits_fn, examples: list[Example], loss: str, student_window: int = 0, device="cpu") -> torch.Tensor:
    """The self-study loss of one batch: ``logits_fn(ids, **inputs)`` is the student (a learner's ``logits``)."""
    batch = student_batch(examples, student_window, device)
    answer = batch.answer_logits(logits_fn(batch.ids, **batch.inputs()))
    return label_loss(answer, examples) if loss == "label" else selfstudy_kl(answer, examples)


def distillation_loss(lm, memory, examples: list[Example], student_window: int = 0, layers=None,
                      loss: str = "kl") -> torch.Tensor:
    """Self-study loss of ``memory`` on ``examples`` (student sees probe [+ recent window] only)."""
    def student(ids, **inputs):
        with lm.use_memory(memory, layers):
            return lm.model(input_ids=ids, use_cache=False, **inputs).logits

    return probe_loss(student, examples, loss, student_window, lm.device)


class SelfStudy(Objective):
    name = "selfstudy"
    summary = "answer probes about the text without it: distil the model-with-the-text (--probe-* settings)"

    def __init__(self, cfg, settings=None):
        super().__init__(cfg, settings)
        self.study = getattr(settings, "selfstudy", None) or SelfStudyConfig()
        self.probes = getattr(settings, "probes", None) or ProbeConfig()
        self._off: dict[tuple, LayerInputs] = {}  # the off-text's MLP inputs, per (model, layers, seed)

    def prepare(self, learner, segment) -> list[Example]:
        """Probes made from the segment's text (seeded by ``segment.seed``) and the teacher's answers; the
        teacher is the frozen model (adapters off), in the prompt style of the probes."""
        lm = learner.lm
        pcfg = ProbeConfig(**{**self.probes.to_dict(), "seed": segment.seed})
        chunks = split_chunks(lm.tokenizer, segment.text, pcfg.chunk_tokens)
        with learner.frozen():
            probes = make_probes(lm, chunks, pcfg, progress=False)
            if self.study.loss == "label":
                return label_examples(lm, chunks, probes, pcfg)
            return teacher_examples(lm, chunks, probes, pcfg, progress=False)

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
        if study.loss == "kl" and any(not len(e.topk_logits) for e in examples):
            raise LocasError("--probe-loss kl needs teacher answers; these probes have only reference answers")
        if study.loss == "label" and any(e.reference is None for e in examples):
            examples = [e for e in examples if e.reference is not None]  # model-written probes have no reference
            if not examples:
                raise LocasError("--probe-loss label needs probes with known answers: add the fact or cloze family")
        off = self.off_text(learner) if study.silence_weight else None
        probe_sum, silence_sum, steps, skipped = 0.0, 0.0, 0, 0
        for pick in plan.batches(list(examples), batch=study.batch, shuffle=True):
            optimizer.zero_grad(set_to_none=True)
            probe = probe_loss(learner.logits, pick, study.loss, study.student_window, lm.device)
            loss = probe
            if study.ntp_weight and segment.spans:
                s, e = segment.spans[steps % len(segment.spans)]
                window = segment.tokens[s:e][None].to(lm.device)
                loss = probe + study.ntp_weight * token_nll(learner.logits(window), window).mean()
            if off is not None:
                silence = relative_energy(learner.model_memory(), learner.layers, off, lm).mean()
                loss = loss + study.silence_weight * silence
                silence_sum += float(silence.detach())
            skipped += int(backward_step(learner, optimizer, loss))
            probe_sum, steps = probe_sum + float(probe.detach()), steps + 1
        stats = {"probes": len(examples), study.loss: probe_sum / max(steps, 1), "steps": steps, "skipped": skipped,
                 "prep_cpu_s": prep_cpu_s}
        if off is not None:
            stats["silence"] = silence_sum / max(steps, 1)
        return stats

    def off_text(self, learner) -> LayerInputs:
        """The frozen model's MLP inputs on its own samples at the learner's memory layers (made once)."""
        if not hasattr(learner, "model_memory"):
            raise LocasError("--silence-weight quiets a Locas memory; this learner has none (use --method locas, or "
                             "drop --silence-weight)")
        rows = -(-self.study.silence_tokens // OFF_ROW)
        key = (id(learner.lm), tuple(learner.layers), self.cfg.seed, rows)
        if key not in self._off:
            self._off[key] = off_text(learner.lm, learner.layers, rows=rows, tokens=OFF_ROW, seed=self.cfg.seed)
        return self._off[key]
