"""Golden numbers of every command path on tiny random models (the restructure's guard).

Each case runs one ``locas`` command on a tiny model saved to a temporary directory and returns
what it computed: per-window NLLs, final memories, answers, reports. ``tests/golden/`` holds the
recorded values; ``test_golden.py`` checks they are still produced, within a measured tolerance,
with the CPU kernels pinned to the code path every x86-64 CPU has (``PINNED_KERNELS``, why: see
test_golden.py).

    $ .venv/bin/python tests/golden_cases.py record             # rewrite tests/golden/ (only on purpose; pinned)
    $ ATEN_CPU_CAPABILITY=avx2 .venv/bin/python tests/golden_cases.py dump OUT [NAME ...]   # one run, to OUT
    $ .venv/bin/python tests/golden_cases.py spread pinned default avx2 avx512   # each kernel set vs the goldens
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
import transformers  # noqa: E402

GOLDEN = Path(__file__).parent / "golden"
# One code path that every x86-64 CPU runs bit for bit: ATen's baseline kernels (no AVX2/AVX-512 dispatch), MKL's
# conditional numerical reproducibility at its SSE2-compatible branch (Intel and AMD alike), oneDNN at SSE4.1.
PINNED_KERNELS = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"}


def kernel_env(isa: str = "pinned") -> dict:
    """Environment for a child that runs the cases: ``pinned`` (the goldens' kernels), or one ATen kernel set
    (``default``, ``avx2``, ``avx512``) with MKL and oneDNN left to pick their own code path for this CPU."""
    env = {k: v for k, v in os.environ.items() if k not in PINNED_KERNELS}
    if isa == "pinned":
        return {**env, **PINNED_KERNELS}
    return {**env, "ATEN_CPU_CAPABILITY": isa}
CLOCKS = {"train_s", "train_cpu_s", "cpu_s", "prep_cpu_s", "prefill_s", "answer_s", "questions_per_s",
          "questions_per_s_with_prefill", "wall_s", "rel_time"}
PATHS = {"model", "memory_file", "memories", "dense", "adapter", "heldout", "source", "memorised", "memory"}


def _is_path(v) -> bool:
    return isinstance(v, str) or isinstance(v, list) and all(isinstance(x, str) for x in v)


def untimed(obj):
    """``obj`` without clock fields and file paths (the only values allowed to differ between runs)."""
    if isinstance(obj, dict):
        return {k: untimed(v) for k, v in obj.items() if k not in CLOCKS and not (k in PATHS and _is_path(v))}
    if isinstance(obj, list):
        return [untimed(v) for v in obj]
    return obj


def cli(*argv) -> None:
    from locas.cli import main

    code = main([str(a) for a in argv])
    if code not in (0, None):
        raise RuntimeError(f"locas {' '.join(map(str, argv))} exited with {code}")


def memory_tensor(path) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("memory")


# ---- tiny models saved to disk ---------------------------------------------------------------
def word_model(root: Path, arch: str = "llama") -> Path:
    """A tiny llama (or gpt2) with the word-level tokenizer of the self-study test document."""
    from conftest import _COMMON
    from test_selfstudy import DOC, _word_tokenizer

    tok = _word_tokenizer(DOC)
    torch.manual_seed(0)
    if arch == "gpt2":
        config = transformers.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=3, n_head=4, n_inner=48,
                                         n_positions=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    else:
        config = transformers.LlamaConfig(**{**_COMMON, "vocab_size": len(tok)})
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    out = root / f"word-{arch}"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def char_model(root: Path, chat: bool = True, max_positions: int = 4096) -> Path:
    from test_locomo_support import char_lm

    lm = char_lm(seed=2, chat=chat, max_positions=max_positions)
    out = root / ("char-chat" if chat else "char")
    lm.model.save_pretrained(out)
    lm.tokenizer.save_pretrained(out)
    return out


def word_chat_model(root: Path) -> Path:
    """A tiny llama with a word-level chat tokenizer over the LoCoMo test conversation (sampled words can
    match a cloze target, so GRPO gets a reward signal)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from locas.text.prompts import INSTRUCTION, TEMPORAL_HINT
    from test_locomo import _conv
    from test_locomo_support import CHAT_TEMPLATE

    conv = _conv()
    corpus = " ".join([conv.text(), *(q.question for q in conv.qa), INSTRUCTION, TEMPORAL_HINT,
                       "Question: Short answer: DATE: CONVERSATION: said Fill in the blank ____ In which year What "
                       "does the text say about comes right after this sentence user assistant"])
    pre = pre_tokenizers.Whitespace()
    words = sorted({w for w, _ in pre.pre_tokenize_str(corpus)})
    specials = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    vocab = {**{t: i for i, t in enumerate(specials)}, **{w: i + len(specials) for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre
    tok.add_special_tokens(specials)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                                eos_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(3)
    config = transformers.LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    out = root / "word-chat"
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


def doc_file(root: Path, repeats: int = 3) -> Path:
    from test_selfstudy import DOC

    path = root / "doc.txt"
    path.write_text("\n\n".join([DOC] * repeats))
    return path


def mmlu_data(root: Path) -> Path:
    from test_locomo import _write_dataset
    from test_mmlu import QUESTIONS, write_mmlu

    data = root / "data"
    write_mmlu(data / "mmlu", "toy", [(q, ch, i % 4) for i, (q, ch) in enumerate(QUESTIONS)], "test")
    write_mmlu(data / "mmlu", "toy", [(f"dev {i}?", ("a", "b", "c", "d"), i % 4) for i in range(5)], "dev")
    _write_dataset(data)
    return data


# ---- the cases ---------------------------------------------------------------------------------
def pg19_case(root: Path, name: str, model: Path, *flags) -> dict:
    out = root / name
    cli("pg19", "--book", doc_file(root), "--model", model, "--device", "cpu", "--max-tokens", 240,
        "--window-size", 32, "--checkpoint-every", 0, "--out", out, *flags)
    payload = json.loads((out / "results.json").read_text())
    return {"json": {m: [r["window_nll"] for r in runs] for m, runs in payload["per_book"].items()}}


def memorize_case(root: Path, name: str, model: Path, *flags) -> dict:
    out = root / f"{name}.locas"
    cli("memorize", doc_file(root, 2), "-o", out, "--model", model, "--device", "cpu", "--window-size", 32,
        "--memory-width", 4, "--lr", 0.05, *flags)
    got = {"json": {}, "tensors": {"memory": memory_tensor(out)}}
    recall = Path(f"{out}.recall.json")
    if recall.is_file():
        got["json"]["recall"] = untimed(json.loads(recall.read_text()))
    probes = Path(f"{out}.probes.json")
    if probes.is_file():
        got["json"]["probes"] = json.loads(probes.read_text())["sets"]
    return got


def locomo_case(root: Path, name: str, method: str, loss: str, words: bool = False) -> dict:
    model, data = (word_chat_model(root) if words else char_model(root)), mmlu_data(root)
    out = root / name
    cli("locomo", "--memory-type", method, "--ttt-loss", loss, "--context-mode", "date_split", "--also-context",
        "none", "--recent-tokens", 80, "--conversations", "conv-x", "--window-size", 64, "--memory-width", 4,
        "--lora-rank", 2, "--lr", 0.05, "--max-new-tokens", 3, "--sd-context", 128, "--model", model, "--data-dir",
        data, "--device", "cpu", "--out", out)
    payload = json.loads((out / "results.json").read_text())
    got = {"json": {"runs": untimed(payload["runs"])}, "tensors": {}}
    mem = out / "memories" / "conv-x.locas"
    if mem.is_file():
        got["tensors"]["memory"] = memory_tensor(mem)
    return got


def retention_case(root: Path) -> dict:
    model, data = char_model(root, chat=False, max_positions=1024), mmlu_data(root)
    book, other = root / "book.txt", root / "other.txt"
    book.write_text("the cat sat on the mat. " * 8)
    other.write_text("a different text about dogs and the sea. " * 3)
    plain = ["--model", model, "--device", "cpu"]
    common = [*plain, "--data-dir", data]
    mem = root / "book.locas"
    cli("memorize", book, "-o", mem, "--objective", "ntp", "--window-size", 32, "--memory-width", 4, "--lr", 0.05,
        *plain)
    cli("fuse", "--memory", mem, "-o", root / "fused", *plain)
    cli("retention", "--memory", mem, "--dense", root / "fused", "--heldout", other, "--heldout-tokens", 0,
        "--shots", 2, "--limit-per-subject", 0, "--window-size", 32, "--out", root / "ret", *common)
    cli("pg19", "--book", book, "--method", "lora", "--method", "locas", "--window-size", 32, "--memory-width", 4,
        "--lora-rank", 2, "--lr", 3e-2, "--heldout", other, "--heldout-tokens", 0, "--shots", 2,
        "--limit-per-subject", 0, "--retention", "--out", root / "pgret", *common)
    cli("mmlu", "--memory", mem, "--shots", 2, "--out", root / "mmlu.json", *common)
    return {"json": {"retention": untimed(json.loads((root / "ret" / "results.json").read_text())),
                     "pg19_retention": untimed(json.loads((root / "pgret" / "retention" / "results.json").read_text())),
                     "mmlu": untimed(json.loads((root / "mmlu.json").read_text()))},
            "tensors": {"memory": memory_tensor(mem)}}


def ask_case(root: Path, capsys=None) -> dict:
    import contextlib
    import io

    model = char_model(root)
    mem = root / "m.locas"
    common = ["--model", model, "--device", "cpu"]
    cli("memorize", doc_file(root, 1), "-o", mem, "--objective", "ntp", "--window-size", 64, "--memory-width", 4,
        "--lr", 0.05, *common)
    ctx = root / "ctx.txt"
    ctx.write_text("Ann said the cat is Tom.\n")
    answers = {}
    for label, argv in {"memory": ["ask", "What is the cat called?", "--memory", mem, "--max-new-tokens", 6],
                        "plain": ["ask", "Cat?", "--memory", mem, "--prompt-style", "plain", "--max-new-tokens", 6],
                        "context": ["ask", "Cat?", "--context", ctx, "--max-new-tokens", 6]}.items():
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            cli(*argv, *common)
        answers[label] = buf.getvalue()
    return {"json": answers, "tensors": {"memory": memory_tensor(mem)}}


def cases() -> dict:
    """name -> function(root) -> {"json": ..., "tensors": ...}"""
    def glu(root):
        return word_model(root, "llama")

    def gpt2(root):
        return word_model(root, "gpt2")

    out = {
        "pg19_methods": lambda r: pg19_case(r, "methods", glu(r), "--method", "truncate", "--method", "full",
                                            "--method", "locas", "--method", "lora", "--memory-width", 4,
                                            "--lora-rank", 2, "--lr", 0.05, "--full-context", 96),
        "pg19_sd": lambda r: pg19_case(r, "sd", glu(r), "--method", "locas", "--loss", "SD", "--sd-topk", 8,
                                       "--sd-context", 64, "--memory-width", 4, "--lr", 0.05),
        "pg19_mix": lambda r: pg19_case(r, "mix", glu(r), "--method", "locas", "--loss", "MIX", "--mix-weight", 0.5,
                                        "--memory-width", 4, "--lr", 0.05),
        "pg19_lora_sd": lambda r: pg19_case(r, "lorasd", glu(r), "--method", "lora", "--loss", "SD",
                                            "--lora-rank", 2, "--lr", 0.01, "--sd-context", 64),
        "pg19_options": lambda r: pg19_case(r, "opts", glu(r), "--method", "locas", "--steps-per-window", 2,
                                            "--memory-layers", "top:2", "--memory-init", "random_index",
                                            "--tau-scale", 2, "--memory-width", 4, "--lr", 0.01, "--epochs", 2),
        "pg19_cosine": lambda r: pg19_case(r, "cos", glu(r), "--method", "locas", "--schedule", "cosine",
                                           "--memory-width", 4, "--lr", 0.05),
        "pg19_mlp_bp": lambda r: pg19_case(r, "mlpbp", gpt2(r), "--method", "truncate", "--method", "locas",
                                           "--variant", "mlp", "--update", "bp", "--memory-width", 8, "--lr", 0.05),
        "pg19_mlp_bp_init": lambda r: pg19_case(r, "mlpinit", gpt2(r), "--method", "locas", "--variant", "mlp",
                                                "--update", "bp", "--mlp-init", "highest", "--memory-width", 8,
                                                "--lr", 0.05, "--mlp-activation", "backbone"),
        "pg19_mlp_nlsvd": lambda r: pg19_case(r, "nlsvd", gpt2(r), "--method", "locas", "--variant", "mlp",
                                              "--update", "nlsvd", "--capacity", 16, "--write-count", 4),
        "pg19_mlp_nlsvd_all": lambda r: pg19_case(r, "nlsvdall", gpt2(r), "--method", "locas", "--variant", "mlp",
                                                  "--update", "nlsvd", "--write-tokens", "all", "--capacity", 64,
                                                  "--nlsvd-clip", "--write-eps", 2),
        "memorize_ntp": lambda r: memorize_case(r, "ntp", glu(r), "--objective", "ntp", "--epochs", 2),
        "memorize_recall": lambda r: memorize_case(r, "recall", glu(r), "--chunk-tokens", 40, "--epochs", 1),
        "memorize_sd": lambda r: memorize_case(r, "sd", glu(r), "--objective", "sd", "--sd-topk", 8),
        "memorize_mix": lambda r: memorize_case(r, "mix", glu(r), "--objective", "mix"),
        "memorize_selfstudy": lambda r: memorize_case(
            r, "ss", glu(r), "--objective", "selfstudy", "--families", "cloze,template", "--chunk-tokens", 40,
            "--probes-per-chunk", 3, "--heldout-per-chunk", 2, "--epochs", 2, "--answer-tokens", 4, "--recall",
            "--heldout-families", "cloze,template", "--probe-loss", "kl", "--probe-style", "qa"),
        "memorize_selfstudy_generated": lambda r: memorize_case(
            r, "ssgen", glu(r), "--objective", "selfstudy", "--families", "cloze,question,instruction,summary",
            "--chunk-tokens", 60, "--probes-per-chunk", 4, "--heldout-per-chunk", 1, "--epochs", 1,
            "--answer-tokens", 3, "--samples", 2, "--probe-style", "plain", "--probe-loss", "kl", "--recall",
            "--heldout-families", "cloze,question"),
        "retention": retention_case,
        "ask": ask_case,
        "locomo_none": lambda r: locomo_case(r, "none", "none", "SD"),
    }
    for method in ("locas", "lora"):
        for loss in ("NTP", "SD", "MIX", "GRPO", "SELFSTUDY"):
            out[f"locomo_{method}_{loss.lower()}"] = (lambda m, l: lambda r: locomo_case(r, f"{m}-{l}", m, l))(
                method, loss)
            out[f"locomo_words_{method}_{loss.lower()}"] = (
                lambda m, l: lambda r: locomo_case(r, f"w{m}-{l}", m, l, words=True))(method, loss)
    return out


def run_case(name: str, root: Path) -> dict:
    torch.set_num_threads(1)
    root.mkdir(parents=True, exist_ok=True)
    got = cases()[name](root)
    got.setdefault("json", {})
    got.setdefault("tensors", {})
    return json.loads(json.dumps(got["json"])), {k: v.contiguous() for k, v in got["tensors"].items()}


def record(names=None, where: Path = GOLDEN, keep_going: bool = False) -> None:
    """Run the cases and write ``NAME.json`` (+ ``NAME.safetensors``) to ``where``; with ``keep_going`` a case
    that raises writes ``NAME.error`` (its traceback) and the others still run."""
    import tempfile
    import traceback

    from safetensors.torch import save_file

    where.mkdir(parents=True, exist_ok=True)
    for name in names or cases():
        try:
            with tempfile.TemporaryDirectory() as tmp:
                data, tensors = run_case(name, Path(tmp))
        except Exception:
            if not keep_going:
                raise
            (where / f"{name}.error").write_text(traceback.format_exc())
            print(f"failed {name}", flush=True)
            continue
        (where / f"{name}.json").write_text(json.dumps(data, indent=0, sort_keys=True))
        if tensors:
            save_file(tensors, str(where / f"{name}.safetensors"))
        print(f"recorded {name}", flush=True)


def _floats(a, b, path=""):
    """(path, got, want) of every float pair in two JSON values of the same shape."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) & set(b)):
            yield from _floats(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from _floats(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float) and a == a:
        yield path, a, b


def spread(isas: list[str]) -> None:
    """Run every case under each kernel set (a child each) and print the largest difference from the goldens:
    scalars relative to |golden|, tensors relative to their largest |value|; both as a fraction of what
    test_golden allows. The numbers docs/TESTING.md records."""
    import subprocess
    import tempfile

    from safetensors.torch import load_file

    from test_golden import ATOL, RTOL, TENSOR_RTOL, _close, _diff, _tensor_diffs  # the test's own tolerance

    for isa in isas:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, __file__, "dump", tmp], env=kernel_env(isa), check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            worst_rel, worst_used, worst_tensor, failing, rounded = (0.0, ""), (0.0, ""), (0.0, ""), [], 0
            for name in sorted(cases()):
                got = json.loads((Path(tmp) / f"{name}.json").read_text())
                want = json.loads((GOLDEN / f"{name}.json").read_text())
                failing += [f"{name}{d}" for d in _diff(got, want)]
                for path, a, b in _floats(got, want):
                    used = abs(a - b) / (ATOL + RTOL * abs(b))
                    if used > 1:  # within the tolerance only as a rounded value, one unit of its last decimal
                        rounded += _close(a, b)
                        continue
                    if used > worst_used[0]:
                        worst_used = (used, f"{name}{path}")
                    if abs(a - b) / max(abs(b), 1e-30) > worst_rel[0]:
                        worst_rel = (abs(a - b) / max(abs(b), 1e-30), f"{name}{path}")
                stored = GOLDEN / f"{name}.safetensors"
                if stored.is_file():
                    g, w = load_file(str(Path(tmp) / f"{name}.safetensors")), load_file(str(stored))
                    failing += [f"{name} {d}" for d in _tensor_diffs(g, w)]
                    for key in w:
                        r = ((g[key].double() - w[key].double()).abs().max() / w[key].double().abs().max()).item()
                        if r > worst_tensor[0]:
                            worst_tensor = (r, f"{name}.{key}")
        print(f"{isa:8s} scalars: largest relative {worst_rel[0]:.1e} ({worst_rel[1]}), largest share of the "
              f"tolerance {worst_used[0]:.2f} ({worst_used[1]}); {rounded} rounded values one unit apart; "
              f"tensors: {worst_tensor[0]:.1e} of scale "
              f"({worst_tensor[1]}, {worst_tensor[0] / TENSOR_RTOL:.2f} of the tolerance); "
              f"{len(failing)} outside the tolerance{': ' + '; '.join(failing[:3]) if failing else ''}", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["record"]:
        if any(os.environ.get(k) != v for k, v in PINNED_KERNELS.items()):  # goldens are recorded pinned
            os.execve(sys.executable, [sys.executable, *sys.argv], kernel_env("pinned"))
        record(sys.argv[2:] or None)
    elif sys.argv[1:2] == ["dump"] and len(sys.argv) > 2:
        record(sys.argv[3:] or None, Path(sys.argv[2]), keep_going=True)
    elif sys.argv[1:2] == ["spread"] and len(sys.argv) > 2:
        spread(sys.argv[2:])
    else:
        raise SystemExit(__doc__)
