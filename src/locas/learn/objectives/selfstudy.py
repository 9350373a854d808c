"""Self-study: train the memory so the model answers questions about a text *without* the text.

Plain next-token training stores a text's wording, not answers to questions about it. Self-study
trains the memory model, reading only a probe about the text (no text in the prompt), to give the
probe's answer: by default (``loss="label"``) the reference answer of ``fact`` probes (every name
and number of every sentence hidden in turn, asked in three wordings, in the prompt format of
``locas ask``), cross-entropy on the answer and its stop token; with ``loss="kl"`` it distils the
frozen model *with the text in context* instead (KL(teacher || student) over the teacher's own
answer tokens, top-k). Each step is a batch of left-padded probes (logits only at the answer
positions) plus ``ntp_weight`` x next-token loss on one of the segment's windows, and, to keep the model
itself elsewhere, ``silence_weight`` x the memory's output energy (``learn/silence.py``), ``locality_weight``
x KL(base || model) on the model's own samples (``locality_kl``) and ``decoy_weight`` x the same KL at the
answers of questions about them (``decoy_kl``). docs/RECALL.md measures the levers.

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
from ..silence import LayerInputs, off_text, own_samples, relative_energy
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
    silence_tokens: int = setting(512, "self-study: tokens of the model's own samples the silence, locality and decoy "
                                       "terms are measured on (rows of 128, drawn once)", minimum=1)
    locality_weight: float = setting(0.0, "self-study: weight of the locality term in every step, KL(base || memory "
                                          "model) on one 128-token row of the model's own samples, the rows in turn "
                                          "(any learner, TempLoRA too; 0 = off)", minimum=0)
    decoy_weight: float = setting(0.0, "self-study: weight of the decoy term in every step, KL(base || model) at the "
                                       "answers of a batch of fact probes about the model's own samples: questions in "
                                       "the probes' prompt that the text does not answer (any learner; 0 = off)",
                                  minimum=0)

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


def kl_to_base(learner, ids: torch.Tensor, select, **inputs) -> torch.Tensor:
    """KL(base || learner), averaged over the positions ``select`` keeps of the logits of ``ids`` (B, T) -> (N, V):
    how far the learner's state moves the model's next-token distributions there from the frozen model's (as every
    teacher reads it). ``inputs``: as ``learner.logits`` takes them."""
    with torch.no_grad(), learner.frozen():
        base = select(learner.logits(ids, **inputs)).float()  # (N, V)
    return distill_kl(select(learner.logits(ids, **inputs)), TeacherTargets(torch.log_softmax(base, -1), None))


def locality_kl(learner, ids: torch.Tensor) -> torch.Tensor:
    """``kl_to_base`` at every position of ``ids`` (1, T): a text the learner was not trained on."""
    return kl_to_base(learner, ids, lambda logits: logits[0])


def decoy_kl(learner, examples: list[Example], student_window: int = 0, device="cpu") -> torch.Tensor:
    """``kl_to_base`` over the answer tokens of ``examples`` (questions the memory should leave as the frozen model
    answers them), each read as the student reads a probe."""
    batch = student_batch(examples, student_window, device)
    return kl_to_base(learner, batch.ids, batch.answer_logits, **batch.inputs())


class SelfStudy(Objective):
    name = "selfstudy"
    summary = "answer probes about the text without it: distil the model-with-the-text (--probe-* settings)"

    def __init__(self, cfg, settings=None):
        super().__init__(cfg, settings)
        self.study = getattr(settings, "selfstudy", None) or SelfStudyConfig()
        self.probes = getattr(settings, "probes", None) or ProbeConfig()
        self._own: dict[tuple, torch.Tensor] = {}  # the model's own samples, per (model, seed, rows)
        self._off: dict[tuple, LayerInputs] = {}  # their MLP inputs, per (model, layers, seed, rows)
        self._decoys: dict[tuple, list[Example]] = {}  # fact probes about them, per (model, seed, rows)

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
        own = self.own_samples(learner.lm) if study.locality_weight else None
        decoys = self.decoys(learner) if study.decoy_weight else None
        probe_sum, silence_sum, locality_sum, decoy_sum, steps, skipped = 0.0, 0.0, 0.0, 0.0, 0, 0
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
            if own is not None:
                locality = locality_kl(learner, own[steps % len(own)][None])
                loss = loss + study.locality_weight * locality
                locality_sum += float(locality.detach())
            if decoys is not None:
                first = steps * study.batch
                pick_decoys = [decoys[(first + i) % len(decoys)] for i in range(min(study.batch, len(decoys)))]
                decoy = decoy_kl(learner, pick_decoys, study.student_window, lm.device)
                loss = loss + study.decoy_weight * decoy
                decoy_sum += float(decoy.detach())
            skipped += int(backward_step(learner, optimizer, loss))
            probe_sum, steps = probe_sum + float(probe.detach()), steps + 1
        stats = {"probes": len(examples), study.loss: probe_sum / max(steps, 1), "steps": steps, "skipped": skipped,
                 "prep_cpu_s": prep_cpu_s}
        if off is not None:
            stats["silence"] = silence_sum / max(steps, 1)
        if own is not None:
            stats["locality"] = locality_sum / max(steps, 1)
        if decoys is not None:
            stats["decoy"] = decoy_sum / max(steps, 1)
        return stats

    def decoys(self, learner) -> list[Example]:
        """Fact probes about the model's own samples (``own_samples``), in the probes' prompt, with their reference
        answers as the teacher-forced continuation (made once per model, seed and size)."""
        lm = learner.lm
        ids = self.own_samples(lm)
        key = (id(lm), self.cfg.seed, len(ids))
        if key not in self._decoys:
            text = "\n\n".join(lm.tokenizer.decode(row[1:], skip_special_tokens=True) for row in ids)
            pcfg = ProbeConfig(**{**self.probes.to_dict(), "seed": self.cfg.seed})
            chunks = split_chunks(lm.tokenizer, text, pcfg.chunk_tokens)
            with learner.frozen():
                made = label_examples(lm, chunks, make_probes(lm, chunks, pcfg, progress=False), pcfg)
            if not made:
                raise LocasError("--decoy-weight found no fact to ask about in the model's own samples; raise "
                                 "--silence-tokens, or drop --decoy-weight")
            self._decoys[key] = made
        return self._decoys[key]

    def own_samples(self, lm) -> torch.Tensor:
        """(rows, 1 + 128) the frozen model's own samples (``silence.own_samples``): the off-text of the silence
        and locality terms, drawn once per model, seed and size."""
        rows = -(-self.study.silence_tokens // OFF_ROW)
        key = (id(lm), self.cfg.seed, rows)
        if key not in self._own:
            self._own[key] = own_samples(lm, rows=rows, tokens=OFF_ROW, seed=self.cfg.seed)
        return self._own[key]

    def off_text(self, learner) -> LayerInputs:
        """The frozen model's memory inputs on its own samples at the learner's memory layers and site (made once)."""
        if not hasattr(learner, "model_memory"):
            raise LocasError("--silence-weight quiets a Locas memory; this learner has none (use --method locas, or "
                             "drop --silence-weight)")
        ids = self.own_samples(learner.lm)
        key = (id(learner.lm), learner.lm.site, tuple(learner.layers), self.cfg.seed, len(ids))
        if key not in self._off:
            self._off[key] = off_text(learner.lm, learner.layers, ids)
        return self._off[key]
