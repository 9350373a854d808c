"""Held-out recall of a memory: answer probes it was never trained on, with no text in the prompt.

For every held-out probe (``locas.probes``, another seed than the training probes) or written
question (``question_examples``: the recall benchmark's), the answer NLL and the greedy answer's
exact match / F1 / "answer contained" with the memory, without it (the base model), and of the
teacher (the base model with the text in context, the ceiling). ``gap_closed`` is the share of the
base-to-teacher NLL gap the memory closes; ``nll_ratio`` is memory NLL / base NLL.

    >>> report = recall_report(lm, memory, heldout, probe_cfg)          # dict: summary, rows, samples
    >>> header, rows = recall_table(report)
    >>> examples = question_examples(lm, text, [{"question": "Who built the mill?", "answer": "Ada Voss"}], cfg)
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..core.model import ModelState
from ..errors import LocasError
from ..probes.families import Probe
from ..probes.teacher import teacher_examples
from ..text.decoding import Decoder
from ..text.metrics import answer_contained, squad_exact_f1


@torch.no_grad()
def student_answers(lm, examples: list, memory, max_new: int) -> list[dict]:
    """No-context answer NLL and greedy answer of each example, with ``memory`` (a tensor or a learner's
    ``ModelState``; None = the base model)."""
    rows: list[dict | None] = [None] * len(examples)
    groups: dict[tuple, list[int]] = {}
    for j, e in enumerate(examples):  # examples that share what the student sees first share a prefill
        groups.setdefault(tuple(e.student_prefix), []).append(j)
    state = memory if isinstance(memory, ModelState) else ModelState(memory=memory)
    with state.apply(lm) as model:
        for prefix, idx in groups.items():
            decoder = Decoder(model, lm.tokenizer, list(prefix))
            prompts = [examples[j].prompt for j in idx]
            outs = decoder.generate(prompts, max_new, min_new_tokens=1)
            nlls = decoder.nll(prompts, [examples[j].target for j in idx])
            for j, out, nll in zip(idx, outs, nlls):
                text = lm.tokenizer.decode(out.tokens).strip()
                exact, f1 = squad_exact_f1(text, examples[j].target_text)
                contained = answer_contained(text, [examples[j].target_text, *examples[j].aliases])
                rows[j] = {"nll": nll, "answer": text, "exact": exact, "f1": f1, "contained": float(contained)}
    return rows


def question_examples(lm, text: str, questions: list[dict], cfg) -> list:
    """Written questions about ``text`` (``{"question", "answer", "aliases"?}``) as examples: the teacher reads
    the whole text (one chunk) in ``cfg``'s prompt style and answers greedily; the student sees the question only."""
    probes = [Probe("question", 0, q["question"], q["answer"]) for q in questions]
    examples = teacher_examples(lm, [text], probes, cfg, progress=False)
    for e, q in zip(examples, questions):
        e.aliases = list(q.get("aliases", []))
    return examples


def recall_report(lm, memory, examples: list, cfg, base_rows: list[dict] | None = None,
                  progress: bool = True) -> dict:
    """Held-out recall: answer NLL and exact/F1 with vs without the memory (a tensor, a ``ModelState`` or None),
    with the teacher as reference.

    ``base_rows`` (from a previous call's ``report["rows"]["base"]``) skips re-evaluating the base model.
    """
    if not examples:
        raise LocasError("no held-out probes to report recall on; raise --heldout-per-chunk")
    max_new = cfg.answer_tokens
    bar = tqdm(total=2 if base_rows is None else 1, desc="recall", disable=not progress)
    if base_rows is None:
        base_rows = student_answers(lm, examples, None, max_new)
        bar.update(1)
    mem_rows = student_answers(lm, examples, memory, max_new) if memory is not None else base_rows
    bar.update(1)
    bar.close()
    teacher = [squad_exact_f1(e.answer_text, e.target_text) for e in examples]
    teacher_contained = [float(answer_contained(e.answer_text, [e.target_text, *e.aliases])) for e in examples]
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
                      "nll_ratio": m_nll / b_nll if b_nll > 0 else float("nan"),
                      "teacher_nll_ratio": t_nll / b_nll if b_nll > 0 else float("nan"),
                      "improved": sum(mem_rows[j]["nll"] < base_rows[j]["nll"] for j in idx) / len(idx),
                      "teacher_f1": sum(teacher[j][1] for j in idx) / len(idx),
                      "teacher_contained": sum(teacher_contained[j] for j in idx) / len(idx),
                      "base_exact": mean(base_rows, "exact"), "memory_exact": mean(mem_rows, "exact"),
                      "base_f1": mean(base_rows, "f1"), "memory_f1": mean(mem_rows, "f1"),
                      "base_contained": mean(base_rows, "contained"),
                      "memory_contained": mean(mem_rows, "contained")}
    samples = [{"family": e.family, "reference": e.target_text, "teacher": e.answer_text,
                "base": b["answer"], "memory": m["answer"]} for e, b, m in zip(examples, base_rows, mem_rows)]
    return {"summary": summary, "rows": {"base": base_rows, "memory": mem_rows}, "samples": samples}


def recall_table(report: dict) -> tuple[list[str], list[list]]:
    header = ["probes", "n", "NLL ctx", "NLL base", "NLL mem", "ratio mem/base", "improved", "gap closed", "F1 ctx",
              "F1 base", "F1 mem", "EM base", "EM mem", "contained base", "contained mem"]
    rows = [[g, s["n"], s["teacher_nll"], s["base_nll"], s["memory_nll"], s["nll_ratio"], s["improved"],
             s["gap_closed"], s["teacher_f1"], s["base_f1"], s["memory_f1"], s["base_exact"], s["memory_exact"],
             s["base_contained"], s["memory_contained"]] for g, s in report["summary"].items()]
    return header, rows
