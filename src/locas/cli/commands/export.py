"""``locas export DIR -o model.gguf``: a (fused) checkpoint as one GGUF file for llama.cpp, Ollama, LM Studio.

    $ locas fuse --memory notes.locas -o fused/
    $ locas export fused/ -o notes.gguf --dtype q8_0
    $ llama-cli -m notes.gguf -p "Ann adopted"

Llama-architecture checkpoints (SmolLM2, Llama, TinyLlama); see docs/ENGINES.md for the measured
agreement with transformers.
"""

from __future__ import annotations

from ..checks import path_arg
from ..flags import add_output_arg, add_threads_arg

HELP = "export a (fused) Llama-architecture checkpoint as a GGUF file for llama.cpp (f32, f16, q8_0)"
# a small valid invocation: the bad-input matrix (tests/test_bad_input.py) runs it, then breaks it
EXAMPLE = {"checkpoint": "{model}", "-o": "{out}", "--dtype": "f32"}


def add_arguments(p):
    from ...core.export import DTYPES

    path_arg(p, "checkpoint", kind="dir", help="checkpoint directory (config.json, weights, tokenizer), e.g. from "
                                               "`locas fuse`")
    add_output_arg(p, what="GGUF file", kind="file_out", required=True)
    p.add_argument("--dtype", choices=DTYPES, default="f16",
                   help="weight type: f32 (exact), f16, q8_0 (8-bit blocks; norms stay f32) (default: f16)")
    add_threads_arg(p)


def run(args):
    from ...core.export import export_gguf

    path = export_gguf(args.checkpoint, args.output, dtype=args.dtype)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {args.dtype}); run it with llama.cpp: "
          f"llama-cli -m {path}")
