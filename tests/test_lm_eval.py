"""lm-evaluation-harness integration: the ``locas`` model type scores a local two-question MMLU task."""

from __future__ import annotations

import os

import pytest
import torch

from conftest import random_memory, tiny_lm
from test_mmlu import QUESTIONS, char_tokenizer, write_mmlu

pytest.importorskip("lm_eval")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from locas.core.files import save_memory  # noqa: E402
from locas.data.mmlu import load_questions  # noqa: E402
from locas.eval.mmlu import evaluate_mmlu  # noqa: E402
from locas.integrations.lm_eval_harness import write_mmlu_tasks  # noqa: E402


def run_lm_eval(model_dir, memory, task_dir):
    out = simple_evaluate(model="locas", model_args={"pretrained": str(model_dir), "memory": memory},
                          tasks=["locas_mmlu_toy"],
                          task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
                          num_fewshot=5, batch_size=2, device="cpu", log_samples=True)
    samples = sorted(out["samples"]["locas_mmlu_toy"], key=lambda s: s["doc_id"])
    # per question: log-likelihood of " A" .. " D" after the prompt
    return out["results"]["locas_mmlu_toy"]["acc,none"], [[float(r[0][0]) for r in s["resps"]] for s in samples]


def test_locas_model_type_scores_local_mmlu_task(tmp_path):
    data = tmp_path / "mmlu"
    write_mmlu(data, "toy", [(q, ch, 1) for q, ch in QUESTIONS[:2]], "test")
    write_mmlu(data, "toy", [(f"dev {i}?", ("a", "b", "c", "d"), i % 4) for i in range(5)], "dev")
    assert write_mmlu_tasks(tmp_path / "tasks", data=data) == ["locas_mmlu_toy"]

    lm, tok = tiny_lm("llama"), char_tokenizer()
    lm.model.config.max_position_embeddings = 1024  # rotary positions: a 5-shot character-level prompt fits
    lm.model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    mem = random_memory(lm)
    save_memory(mem, tmp_path / "book.locas", model=lm)

    qs = load_questions(data=data)
    for memory in ("none", str(tmp_path / "book.locas")):
        acc, loglik = run_lm_eval(tmp_path / "model", memory, tmp_path / "tasks")
        with lm.use_memory(None if memory == "none" else mem):
            ours = evaluate_mmlu(lm.model, tok, qs, shots=5, data=data, progress=False)
        assert acc == ours["micro"]
        for rec, ll in zip(sorted(ours["records"], key=lambda r: r["index"]), loglik):
            # lm-eval scores " X" as two characters; the shared " " term cancels in letter differences
            diff_theirs = torch.tensor(ll) - ll[0]
            diff_ours = torch.tensor(rec["logp"]) - rec["logp"][0]
            assert torch.allclose(diff_theirs, diff_ours, atol=1e-4), (memory, diff_theirs, diff_ours)
        if memory == "none":
            base_loglik = loglik
    assert not torch.allclose(torch.tensor(loglik), torch.tensor(base_loglik))  # the memory was installed
