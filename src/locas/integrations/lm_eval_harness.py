"""A ``locas`` model type for lm-evaluation-harness: any supported model, with a memory file or without.

``LocasLM`` subclasses lm-eval's ``HFLM``: it loads the model through ``LocasForCausalLM`` (hub
id, local directory, fused checkpoint, or the embedded ``smollm2-135m``), installs the memory from
``memory=FILE`` (``memory=none`` runs the exact base model), optionally injects a peft adapter
(``adapter=DIR``, e.g. a saved TempLoRA), and hands the result to HFLM, so every lm-eval task
type works unchanged. lm-eval has no plugin discovery, so launch it through this module (which
registers the model type first) or ``import locas.integrations.lm_eval_harness`` in Python.

    $ python -m locas.integrations.lm_eval_harness write-mmlu-tasks tasks/     # local MMLU tasks, no hub
    $ python -m locas.integrations.lm_eval_harness run --model locas --include_path tasks/ \\
          --model_args pretrained=smollm2-135m,memory=book.locas --tasks locas_mmlu --num_fewshot 5
    >>> write_mmlu_tasks("tasks/")     # the same from Python
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..extras import require

require("lm_eval", "the lm-evaluation-harness model type")
from lm_eval.api.registry import register_model  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from ..data.mmlu import available_subjects, categories, mmlu_dir  # noqa: E402
from ..errors import LocasError  # noqa: E402

_NONE = ("", "none", "null", "base")


@register_model("locas")
class LocasLM(HFLM):
    """lm-eval model ``locas``: model_args ``pretrained``, ``memory``, ``adapter``, ``strict``, ``dtype``."""

    def __init__(self, pretrained: str = "smollm2-135m", memory: str | None = None, adapter: str | None = None,
                 strict: bool = True, dtype: str = "float32", device: str | None = None, **kwargs):
        import torch

        from ..core.files import load_memory
        from ..core.model import LocasForCausalLM

        if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"
        dtype = "float32" if dtype in (None, "auto") else dtype
        self.locas = LocasForCausalLM.from_pretrained(str(pretrained), dtype=dtype, device=device)
        self.memory_file = None if memory is None or str(memory).lower() in _NONE else str(memory)
        if self.memory_file:
            self.locas.set_memory(load_memory(self.memory_file, model=self.locas, strict=_bool(strict)))
        model = self.locas.model
        if adapter is not None and str(adapter).lower() not in _NONE:
            from ..learn.learners import load_adapter

            model = load_adapter(self.locas, adapter)
        if self.locas.tokenizer is None:
            raise LocasError(f"'{pretrained}' has no tokenizer; lm-eval needs one")
        super().__init__(pretrained=model, tokenizer=self.locas.tokenizer, **kwargs)


def _bool(v) -> bool:
    return v if isinstance(v, bool) else str(v).lower() not in ("0", "false", "no")


def _jinja_prompt() -> str:
    return "{{question.strip()}}\nA. {{choice0}}\nB. {{choice1}}\nC. {{choice2}}\nD. {{choice3}}\nAnswer:"


def write_mmlu_tasks(out_dir, data=None, subjects: list[str] | None = None, group: str = "locas_mmlu") -> list[str]:
    """Write lm-eval task YAMLs (one per subject + a group ``locas_mmlu``) reading the local MMLU CSVs.

    The prompt is the one ``locas.eval.mmlu`` uses (Hendrycks header, dev split as first-n shots,
    letters as choices), so ``--num_fewshot 5`` gives comparable numbers. Returns the task names.
    """
    root = mmlu_dir(data).resolve()
    subjects = subjects or available_subjects(root)
    cats = categories(root)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for s in subjects:
        test, dev = root / "test" / f"{s}_test.csv", root / "dev" / f"{s}_dev.csv"
        if not test.is_file():
            raise LocasError(f"no MMLU test file for subject '{s}' in {root / 'test'}")
        task = {
            "task": f"{group}_{s}",
            "tag": [f"{group}_{cats.get(s, 'other').split(' ')[0].lower()}"],
            "dataset_path": "csv",
            "dataset_kwargs": {"data_files": {"test": str(test), **({"dev": str(dev)} if dev.is_file() else {})}},
            "test_split": "test",
            **({"fewshot_split": "dev", "fewshot_config": {"sampler": "first_n"}} if dev.is_file() else {}),
            "output_type": "multiple_choice",
            "description": f"The following are multiple choice questions (with answers) about {s.replace('_', ' ')}."
                           "\n\n",
            "doc_to_text": _jinja_prompt(),
            "doc_to_choice": ["A", "B", "C", "D"],
            "doc_to_target": "answer",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0},
        }
        (out / f"{group}_{s}.yaml").write_text(json.dumps(task, indent=1))  # JSON is valid YAML
        names.append(task["task"])
    group_cfg = {"group": group, "task": names,
                 "aggregate_metric_list": [{"metric": "acc", "aggregation": "mean", "weight_by_size": True}],
                 "metadata": {"version": 1.0}}
    (out / f"{group}.yaml").write_text(json.dumps(group_cfg, indent=1))
    return names


def main(argv: list[str] | None = None) -> None:
    """``lm_eval`` command line with the ``locas`` model type registered; ``write-mmlu-tasks DIR [DATA]`` first."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["write-mmlu-tasks"]:
        if len(argv) < 2:
            raise SystemExit("usage: python -m locas.integrations.lm_eval_harness write-mmlu-tasks DIR [DATA_DIR]")
        names = write_mmlu_tasks(argv[1], data=argv[2] if len(argv) > 2 else None)
        print(f"wrote {len(names)} tasks and the group 'locas_mmlu' to {argv[1]}; use --include_path {argv[1]}")
        return
    from lm_eval.__main__ import cli_evaluate

    sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
