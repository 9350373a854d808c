"""locas: parametric test-time memory for Hugging Face causal language models.

    >>> from locas import LocasForCausalLM, save_memory, load_memory
    >>> lm = LocasForCausalLM.from_pretrained("smollm2-135m")
    >>> mem = lm.memorize(lm.tokenizer(text, return_tensors="pt").input_ids, keep_top=32)
"""

from .arch import ArchSpec, get_arch, register_arch, supported_model_types
from .errors import LocasError, MemoryFileError, UnsupportedArchitectureError
from .io import load_memory, read_memory_info, save_memory
from .memory import MemoryMLP, clip_vectors_
from .model import LocasForCausalLM, Qwen3ForCausalLMWithMemory

__version__ = "0.1.0"

__all__ = [
    "ArchSpec",
    "LocasError",
    "LocasForCausalLM",
    "MemoryFileError",
    "MemoryMLP",
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
