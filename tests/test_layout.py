"""The package layout: nothing imports upward; one objective registry, one decoder, one stop-token function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "locas"
# each layer may import its own and lower ranks only (docs/ARCHITECTURE.md)
RANKS = {"_version": 0, "errors": 0, "extras": 0, "settings": 0, "core": 1, "data": 1, "text": 2, "probes": 3,
         "learn": 4, "distributed": 4, "eval": 5, "integrations": 5, "serve": 5, "cli": 6, "__init__": 7,
         "__main__": 7}


def _layer(parts: tuple[str, ...]) -> str:
    """The top-level part of ``locas`` a module path belongs to: ('learn', 'stream') -> 'learn'."""
    return parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, tuple[str, ...]]]:
    """(line, imported module path inside locas) for every locas import of ``path``, relative ones resolved."""
    rel = path.relative_to(SRC).with_suffix("").parts  # e.g. ('learn', 'objectives', 'grpo')
    package = rel[:-1] if path.name != "__init__.py" else rel[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                target = (*base, *(node.module.split(".") if node.module else ()))
            elif node.module and node.module.split(".")[0] == "locas":
                target = tuple(node.module.split(".")[1:])
            else:
                continue
            out.append((node.lineno, target or ("__init__",)))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, tuple(a.name.split(".")[1:])) for a in node.names if a.name.startswith("locas.")]
    return out


MODULES = sorted(p for p in SRC.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_imports_upward(path):
    own = _layer(path.relative_to(SRC).parts)
    for line, target in _imports(path):
        if not target:
            continue
        layer = _layer(target)
        where = f"{path.relative_to(SRC)}:{line}"
        assert RANKS[layer] <= RANKS[own], f"{where} imports locas.{'.'.join(target)} ({layer} is above {own})"


def _defs(pattern: str) -> list[str]:
    """Modules that define a function or class named ``pattern``."""
    found = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == pattern:
                found.append(str(path.relative_to(SRC)))
    return found


def test_one_registry_one_decoder_one_stop_set():
    assert _defs("stop_token_ids") == ["text/decoding.py"]
    assert _defs("Decoder") == ["text/decoding.py"]
    assert _defs("make_objective") == ["learn/objectives/__init__.py"]
    assert _defs("make_learner") == ["learn/learners.py"]
    assert _defs("token_nll") == ["core/head.py"]
    assert _defs("next_token_nll") == ["core/head.py"]
    def names(path):
        tree = ast.parse(path.read_text())
        return {t.id for n in ast.walk(tree) for t in (n.targets if isinstance(n, ast.Assign) else
                                                       [n.target] if isinstance(n, ast.AnnAssign) else [])
                if isinstance(t, ast.Name)}

    registries = [p for p in MODULES if "OBJECTIVES" in names(p)]
    assert [str(p.relative_to(SRC)) for p in registries] == ["learn/objectives/__init__.py"]


def test_every_decoder_path_stops_on_the_same_tokens():
    """ask/chat/LoCoMo answers, the self-study teacher, recall, model-written probes and GRPO all decode through
    ``Decoder``, whose stop set is ``stop_token_ids`` of the tokenizer and model."""
    import torch

    from locas.core.model import ModelState
    from locas.learn.config import TrainConfig
    from locas.learn.learners import LocasLearner
    from locas.learn.objectives import grpo as grpo_mod
    from locas.probes import families, teacher
    from locas.text import decoding
    from test_locomo_support import char_lm

    lm = char_lm(seed=0, chat=True)
    expected = decoding.stop_token_ids(lm.tokenizer, lm.model)
    assert {lm.tokenizer.eos_token_id, lm.tokenizer.convert_tokens_to_ids("<|im_end|>"),
            lm.tokenizer.convert_tokens_to_ids("\n")} <= expected
    seen = []
    real = decoding.Decoder.__init__

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)
        seen.append(self.stop_ids)

    decoding.Decoder.__init__ = spy
    try:
        prompt = lm.tokenizer("Ann said hello.", add_special_tokens=False)["input_ids"]
        teacher.answer_with_teacher(lm, prompt, [prompt[:3]], 2, 4)  # the self-study teacher (and recall)
        families.generated_probes(lm, "Ann went to Boston in May with Bob.", 0, "question",
                                  families.ProbeConfig(samples=2, max_probe_tokens=2), seed=0)
        learner = LocasLearner(lm, TrainConfig(memory_width=2))
        learner.begin(torch.tensor(prompt), (0, len(prompt)))
        grpo_mod.sample_group(learner, prompt, grpo_mod.GRPOConfig(group_size=2, max_new_tokens=2))
        with ModelState().apply(lm) as model:  # answering (ask, LoCoMo)
            decoding.Decoder(model, lm.tokenizer, prompt)
    finally:
        decoding.Decoder.__init__ = real
    assert len(seen) == 4 and all(s == expected for s in seen)
