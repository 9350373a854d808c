"""locas: parametric test-time memory for Hugging Face causal language models.

    >>> from locas import LocasForCausalLM, save_memory, load_memory
    >>> lm = LocasForCausalLM.from_pretrained("smollm2-135m")
    >>> mem = lm.init_memory(lm.tokenizer(text, return_tensors="pt").input_ids, width=32)

Layers (each imports only the ones before it): ``core`` (memory, architectures, init, fusion, the
model wrapper, memory files, model loading) <- ``text`` (tokens, prompts, the decoder) <- ``probes``
<- ``learn`` (configs, learners, objectives, streaming and segment training) <- ``eval`` <- ``cli``.
"""

from ._version import __version__  # noqa: F401  (the public version)
from .errors import LocasError, MemoryFileError, UnsupportedArchitectureError

# the public names, imported on first use (``import locas.cli`` stays light: the command can answer
# Ctrl-C and argument errors before torch is loaded)
_LAZY = {
    "ArchSpec": "core.arch", "get_arch": "core.arch", "register_arch": "core.arch",
    "supported_model_types": "core.arch", "load_memory": "core.files", "read_memory_info": "core.files",
    "save_memory": "core.files", "MemoryMLP": "core.memory", "clip_vectors_": "core.memory",
    "LocasForCausalLM": "core.model", "ModelState": "core.model", "Qwen3ForCausalLMWithMemory": "core.model",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'locas' has no attribute {name!r}")


__all__ = [
    "ArchSpec",
    "LocasError",
    "LocasForCausalLM",
    "MemoryFileError",
    "MemoryMLP",
    "ModelState",
    "Qwen3ForCausalLMWithMemory",
    "UnsupportedArchitectureError",
    "clip_vectors_",
    "get_arch",
    "load_memory",
    "read_memory_info",
    "register_arch",
    "save_memory",
    "supported_model_types",
]
