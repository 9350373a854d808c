"""GGUF export of a (fused) Llama-architecture checkpoint, for llama.cpp, Ollama and LM Studio.

``locas fuse`` gives a plain transformers checkpoint; this writes it as one GGUF file with the
``gguf`` package's writer: the hyperparameters, the tokenizer (GPT-2-style BPE from
``tokenizer.json``: tokens, types, merges, special ids, chat template) and the tensors under
llama.cpp's names. Q and K projections are permuted from transformers' rotary layout to
llama.cpp's (as llama.cpp's own converter does); norms stay float32; ``q8_0`` quantises the 2-D
weights (a tensor whose rows are not a multiple of 32 stays f16, as in llama.cpp's converter). A
tied output head is left out (llama.cpp then reads ``token_embd``), and a fused
model's wider FFN is just a larger ``feed_forward_length``: the memory survives the export.

    >>> export_gguf("fused/", "model.gguf", dtype="f16")       # -> Path("model.gguf"), written atomically
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import LocasError
from .files import atomic_write

DTYPES = ("f32", "f16", "q8_0")
ARCHITECTURES = ("llama",)  # the transformers model types written here (SmolLM2, Llama 2/3, TinyLlama)


def _permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """transformers' rotary half-split layout -> llama.cpp's interleaved one, per head (rows of Q or K)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(state: dict, config) -> list[tuple[str, torch.Tensor]]:
    """(gguf name, tensor) in llama.cpp's order and names, from a LlamaForCausalLM state dict."""
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    out = [("token_embd.weight", state["model.embed_tokens.weight"])]
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        for theirs, ours in [("input_layernorm", "attn_norm"), ("self_attn.q_proj", "attn_q"),
                             ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
                             ("self_attn.o_proj", "attn_output"), ("post_attention_layernorm", "ffn_norm"),
                             ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down")]:
            for kind in ("weight", "bias"):
                key = f"{p}{theirs}.{kind}"
                if key not in state:
                    continue
                t = state[key]
                if theirs.endswith("q_proj"):
                    t = _permute(t, heads)
                elif theirs.endswith("k_proj"):
                    t = _permute(t, kv_heads)
                out.append((f"blk.{i}.{ours}.{kind}", t))
    out.append(("output_norm.weight", state["model.norm.weight"]))
    if not getattr(config, "tie_word_embeddings", False) and "lm_head.weight" in state:
        out.append(("output.weight", state["lm_head.weight"]))
    return out


def _tokenizer_fields(writer, tokenizer, vocab_size: int) -> None:
    """GPT-2-style BPE vocabulary of a fast tokenizer: tokens by id, their types, merges, special ids."""
    import gguf

    data = json.loads(tokenizer.backend_tokenizer.to_str())
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise LocasError(f"GGUF export writes BPE tokenizers (GPT-2 style); this one is {model.get('type')!r}")
    vocab = dict(model["vocab"])
    special = {t["content"]: t["id"] for t in data.get("added_tokens", [])}
    vocab.update(special)
    by_id = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if by_id[i] in special else gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    if not merges:
        print("note: the tokenizer has no BPE merges; transformers reads such a file, llama.cpp refuses it")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for name, add in [("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                      ("pad_token_id", writer.add_pad_token_id), ("unk_token_id", writer.add_unk_token_id)]:
        value = getattr(tokenizer, name, None)
        if value is not None:
            add(int(value))
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def _pre_tokenizer(tokenizer) -> str:
    """llama.cpp's name of the pre-tokenizer (the regex that splits text before BPE)."""
    name = (getattr(tokenizer, "name_or_path", "") or "").lower()
    if "smollm" in name or len(tokenizer) == 49152:  # SmolLM's 49152-token vocabulary
        return "smollm"
    if len(tokenizer) >= 128000:
        return "llama-bpe"  # Llama 3
    return "gpt-2"


def export_gguf(checkpoint, output, dtype: str = "f16", progress: bool = True) -> Path:
    """Write the transformers checkpoint directory ``checkpoint`` as the GGUF file ``output``."""
    import gguf
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise LocasError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise LocasError(f"'{checkpoint}' is not a checkpoint directory (no config.json); make one with "
                         "`locas fuse --memory M -o DIR`")
    config = AutoConfig.from_pretrained(checkpoint)
    if config.model_type not in ARCHITECTURES:
        raise LocasError(f"GGUF export writes {', '.join(ARCHITECTURES)} checkpoints, this one is "
                         f"'{config.model_type}'; convert it with llama.cpp's convert_hf_to_gguf.py")
    if getattr(config, "rope_scaling", None) and config.rope_scaling.get("rope_type", "default") != "default":
        raise LocasError(f"GGUF export does not write rope scaling ({config.rope_scaling}); use llama.cpp's "
                         "convert_hf_to_gguf.py")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    tensors = _tensors(state, config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]

    kept_f16: list[str] = []

    def write(tmp):
        kept_f16.clear()
        writer = gguf.GGUFWriter(tmp, "llama")
        writer.add_name(checkpoint.name)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(float(getattr(config, "rope_theta", None) or
                                        (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)))
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_vocab_size(config.vocab_size)
        writer.add_file_type(file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _tokenizer_fields(writer, tokenizer, config.vocab_size)
        for name, t in tensors:
            array = t.float().cpu().numpy()
            if array.ndim == 1 or dtype == "f32":
                writer.add_tensor(name, array.astype(np.float32))
            elif dtype == "f16":
                writer.add_tensor(name, array.astype(np.float16))
            else:
                try:
                    q = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
                except gguf.quants.QuantError:  # rows not a multiple of 32 (an odd fused width): f16, as llama.cpp does
                    writer.add_tensor(name, array.astype(np.float16))
                    kept_f16.append(name)
                    continue
                writer.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=progress)
        writer.close()

    output = Path(output)
    atomic_write(output, write)
    if kept_f16:
        print(f"q8_0: {len(kept_f16)} tensors with rows not a multiple of 32 kept as f16 (e.g. {kept_f16[0]}); "
              "a memory width that keeps intermediate_size a multiple of 32 avoids this")
    return output
