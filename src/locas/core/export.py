"""GGUF export of a (fused) Llama or Gemma 3 checkpoint, for llama.cpp, Ollama and LM Studio.

``locas fuse`` gives a plain transformers checkpoint; this writes it as one GGUF file with the
``gguf`` package's writer: the hyperparameters, the tokenizer (from ``tokenizer.json``: a GPT-2-style
BPE as tokens, types and merges; a SentencePiece-style BPE with byte fallback, as Gemma's, as tokens,
scores and types, the scores ranking its merges) and the tensors under llama.cpp's names, as llama.cpp's
own converter writes them: Llama's Q and K rows permuted from transformers' rotary layout to llama.cpp's;
Gemma's norm weights shifted by one (its RMSNorm scales by ``1 + w``; llama.cpp scales by ``w``), its
embedding scale and sliding windows left to llama.cpp, which applies them itself. Norms stay float32;
``q8_0`` quantises the 2-D weights (a tensor whose rows are not a multiple of 32 stays f16, as in
llama.cpp's converter). A tied output head is left out (llama.cpp then reads ``token_embd``), and a fused
model's wider FFN is just a larger ``feed_forward_length``: the memory survives the export.

    >>> export_gguf("fused/", "model.gguf", dtype="f16")       # -> Path("model.gguf"), written atomically
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import LocasError
from .files import atomic_write
from .model import bos_prefix

DTYPES = ("f32", "f16", "q8_0")


@dataclass(frozen=True)
class _Layout:
    """How one transformers architecture is written for llama.cpp."""

    gguf_arch: str  # llama.cpp's architecture name
    layer: tuple[tuple[str, str], ...]  # (module under model.layers.{i}., llama.cpp's name under blk.{i}.)
    permute_qk: bool  # Llama's rotary layout differs from llama.cpp's; Gemma's (NEOX) does not
    norm_shift: float  # added to every norm weight


_ATTENTION = (("input_layernorm", "attn_norm"), ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"),
              ("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"))
_FFN = (("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down"))
LAYOUTS = {  # the transformers model types written here
    "llama": _Layout("llama", _ATTENTION + (("post_attention_layernorm", "ffn_norm"),) + _FFN, True, 0.0),
    "gemma3_text": _Layout("gemma3", _ATTENTION + (
        ("self_attn.q_norm", "attn_q_norm"), ("self_attn.k_norm", "attn_k_norm"),
        ("post_attention_layernorm", "post_attention_norm"), ("pre_feedforward_layernorm", "ffn_norm"),
        ("post_feedforward_layernorm", "post_ffw_norm")) + _FFN, False, 1.0),
}
ARCHITECTURES = tuple(LAYOUTS)  # SmolLM2, Llama 2/3, TinyLlama; Gemma 3 (text)


def _permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """transformers' rotary half-split layout -> llama.cpp's interleaved one, per head (rows of Q or K)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(state: dict, config, layout: _Layout) -> list[tuple[str, torch.Tensor]]:
    """(gguf name, tensor) in llama.cpp's order and names, from a state dict of ``layout``'s architecture."""
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    shift = lambda t: t + layout.norm_shift if layout.norm_shift else t  # noqa: E731
    out = [("token_embd.weight", state["model.embed_tokens.weight"])]
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        for theirs, ours in layout.layer:
            for kind in ("weight", "bias"):
                key = f"{p}{theirs}.{kind}"
                if key not in state:
                    continue
                t = state[key]
                if layout.permute_qk and theirs.endswith(("q_proj", "k_proj")):
                    t = _permute(t, heads if theirs.endswith("q_proj") else kv_heads)
                elif ours.endswith("norm") and kind == "weight":
                    t = shift(t)
                out.append((f"blk.{i}.{ours}.{kind}", t))
    out.append(("output_norm.weight", shift(state["model.norm.weight"])))
    if not getattr(config, "tie_word_embeddings", False) and "lm_head.weight" in state:
        out.append(("output.weight", state["lm_head.weight"]))
    return out


def _rope_theta(config, layer_type: str = "full_attention") -> float:
    """The rotary base of ``layer_type``'s layers (transformers 4's ``rope_theta`` or 5's ``rope_parameters``)."""
    params = getattr(config, "rope_parameters", None) or {}
    params = params.get(layer_type, params)
    return float(params.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0)


def _check_gemma3(config) -> None:
    """What llama.cpp's gemma3 assumes and does not read from the file: refuse a checkpoint that differs."""
    head_dim = config.head_dim
    pattern = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(config.num_hidden_layers)]
    problems = [
        (list(getattr(config, "layer_types", pattern)) != pattern, "a sliding window on all but every 6th layer"),
        (_rope_theta(config, "sliding_attention") != 10000.0, "a rotary base of 10000 on the sliding layers"),
        (getattr(config, "query_pre_attn_scalar", head_dim) != head_dim, "query_pre_attn_scalar = head_dim"),
        (bool(getattr(config, "final_logit_softcapping", None) or getattr(config, "attn_logit_softcapping", None)),
         "no logit soft-capping"),
    ]
    for wrong, assumed in problems:
        if wrong:
            raise LocasError(f"llama.cpp's gemma3 assumes {assumed}, and this checkpoint differs; convert it with "
                             "llama.cpp's convert_hf_to_gguf.py")


def _hyperparameters(writer, config, layout: _Layout) -> None:
    """The architecture's keys, as llama.cpp's converter writes them."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(_rope_theta(config))
    if layout.gguf_arch == "gemma3":
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_sliding_window(config.sliding_window)
    else:
        writer.add_rope_dimension_count(head_dim)
        writer.add_vocab_size(config.vocab_size)


_BYTE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _tokenizer_fields(writer, tokenizer, vocab_size: int) -> None:
    """The vocabulary of a fast BPE tokenizer: tokens by id, their types, special ids, and either GPT-2-style
    merges or, for a SentencePiece-style BPE with byte fallback (Gemma, Llama 2), scores that rank the merges:
    llama.cpp's SentencePiece tokenizer merges the adjacent pair whose result scores highest, so a token scores
    minus the rank of the first merge that makes it (ahead of any token no merge makes)."""
    import gguf

    data = json.loads(tokenizer.backend_tokenizer.to_str())
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise LocasError(f"GGUF export writes BPE tokenizers (GPT-2 or SentencePiece style); this one is "
                         f"{model.get('type')!r}")
    spm = bool(model.get("byte_fallback"))
    vocab = dict(model["vocab"])
    added = {t["content"]: t for t in data.get("added_tokens", [])}
    vocab.update({t: a["id"] for t, a in added.items()})
    by_id = {i: t for t, i in vocab.items()}
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    if not merges:
        print("note: the tokenizer has no BPE merges; transformers reads such a file, llama.cpp refuses it")
    rank: dict[str, int] = {}
    for r, merge in enumerate(merges):
        rank.setdefault(merge.replace(" ", "", 1), r)
    tokens, types, scores = [], [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(token)
            if token in added:
                types.append(gguf.TokenType.CONTROL if added[token]["special"] or not spm
                             else gguf.TokenType.USER_DEFINED)
            else:
                types.append(gguf.TokenType.BYTE if spm and _BYTE.fullmatch(token) else gguf.TokenType.NORMAL)
        scores.append(-float(rank.get(token, len(merges) + i)))
    if spm:
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_scores(scores)
        writer.add_add_space_prefix(_adds_space_prefix(data))
    else:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(_pre_tokenizer(tokenizer))
        writer.add_token_merges(merges)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    for name, add in [("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                      ("pad_token_id", writer.add_pad_token_id), ("unk_token_id", writer.add_unk_token_id)]:
        value = getattr(tokenizer, name, None)
        if value is not None:
            add(int(value))
    ids = tokenizer("a")["input_ids"]  # what the tokenizer adds after a text, seen rather than configured
    writer.add_add_bos_token(bool(bos_prefix(tokenizer)))
    writer.add_add_eos_token(tokenizer.eos_token_id is not None and ids[-1:] == [tokenizer.eos_token_id])
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def _adds_space_prefix(data: dict) -> bool:
    """Whether a SentencePiece-style tokenizer puts "▁" before the text (Llama 2 does, Gemma does not)."""
    parts = [data.get("normalizer") or {}, data.get("pre_tokenizer") or {}]
    parts += [p for part in list(parts) for p in part.get("normalizers", part.get("pretokenizers", []))]
    return any(p.get("type") == "Prepend" or (p.get("type") == "Metaspace" and p.get("prepend_scheme") != "never")
               for p in parts)


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
    if config.model_type not in LAYOUTS:
        raise LocasError(f"GGUF export writes {', '.join(ARCHITECTURES)} checkpoints, this one is "
                         f"'{config.model_type}'; convert it with llama.cpp's convert_hf_to_gguf.py")
    if getattr(config, "rope_scaling", None) and config.rope_scaling.get("rope_type", "default") != "default":
        raise LocasError(f"GGUF export does not write rope scaling ({config.rope_scaling}); use llama.cpp's "
                         "convert_hf_to_gguf.py")
    layout = LAYOUTS[config.model_type]
    if layout.gguf_arch == "gemma3":
        _check_gemma3(config)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    tensors = _tensors(state, config, layout)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]

    kept_f16: list[str] = []

    def write(tmp):
        kept_f16.clear()
        writer = gguf.GGUFWriter(tmp, layout.gguf_arch)
        writer.add_name(checkpoint.name)
        _hyperparameters(writer, config, layout)
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
