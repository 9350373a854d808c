"""locas: parametric test-time memory for Hugging Face causal language models.

    >>> from locas import LocasForCausalLM, save_memory, load_memory
    >>> lm = LocasForCausalLM.from_pretrained("smollm2-135m")
    >>> mem = lm.init_memory(lm.tokenizer(text, return_tensors="pt").input_ids, width=32)

Layers (each imports only the ones before it): ``core`` (memory, architectures, init, fusion, the
model wrapper, memory files, model loading) <- ``text`` (tokens, prompts, the decoder) <- ``probes``
<- ``learn`` (configs, learners, objectives, streaming and segment training) <- ``eval`` <- ``cli``.
"""

from .core.arch import ArchSpec, get_arch, register_arch, supported_model_types
from .core.files import load_memory, read_memory_info, save_memory
from .core.memory import MemoryMLP, clip_vectors_
from .core.model import LocasForCausalLM, ModelState, Qwen3ForCausalLMWithMemory
from .errors import LocasError, MemoryFileError, UnsupportedArchitectureError

__version__ = "0.2.0"

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
