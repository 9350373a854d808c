"""A fused checkpoint in a real inference engine: llama.cpp (llama-cpp-python) on the GGUF export.

Side by side in one process: SmolLM2-135M (or ``--model gemma3-270m``) with a Locas memory (r=64,
trained with NTP on a PG-19 passage) fused in (``lm.to_dense``), exported by
``locas.core.export.export_gguf`` as f32, f16 and q8_0, and run by llama.cpp on the same token ids as
transformers runs the fused checkpoint:

  greedy equal   the greedy continuation (``--new-tokens``, 32) of every prompt is the same, token for token
  top-1          share of prompt positions whose most likely next token agrees
  |dlogp|        mean and max |log-probability difference| over the prompt positions (full vocabulary)
  tok/s          greedy decoding speed of each, one thread count for both

Prompts: passages of PG-19 book 10321 (not the book the memory read). Needs llama-cpp-python
(``make engines``).

    flock /tmp/locas-cpu.lock python benchmarks/engines.py          # ~4 min
    flock /tmp/locas-cpu.lock python benchmarks/engines.py --model gemma3-270m --prompt-tokens 600
                                                          # prompts past Gemma's 512-token sliding window

Writes benchmarks/results/engines.json, or engines-<model>.json for another model (and the markdown table in it).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from locas import LocasForCausalLM
from locas.core.export import export_gguf
from locas.data.pg19 import load_book
from locas.eval.report import format_table, markdown_table, write_json
from locas.learn.config import TrainConfig
from locas.learn.memorize import memorize_text
from locas.text.tokens import tokenize_text

RESULTS = Path(__file__).parent / "results"


def hf_run(model, ids: list[int], new_tokens: int):
    """Prompt log-probs (T, V) and the greedy continuation of a transformers model, with its decode time."""
    x = torch.tensor([ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(x).logits[0].float(), -1).numpy()
        t0 = time.perf_counter()
        out = model.generate(x, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        dt = time.perf_counter() - t0
    return logp, out[0, len(ids):].tolist(), dt


def llama_run(llm, ids: list[int], new_tokens: int):
    """The same from llama.cpp: prompt log-probs from its logits, greedy by argmax of its logits."""
    llm.reset()
    llm.eval(ids)
    scores = np.array(llm.scores[:len(ids)], dtype=np.float64)  # (T, V)
    top = scores.max(-1, keepdims=True)
    logp = scores - top - np.log(np.exp(scores - top).sum(-1, keepdims=True))  # log-softmax
    out = []
    t0 = time.perf_counter()
    for _ in range(new_tokens):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        llm.eval([token])
    return logp, out, time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--prompt-tokens", type=int, default=96)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fused-out", default=None, help="keep the fused checkpoint (and prompts.json) here, e.g. for "
                                                     "benchmarks/vllm_check.py (default: a temporary directory)")
    p.add_argument("--fused-only", action="store_true", help="write the fused checkpoint and stop (no llama.cpp)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    lm = LocasForCausalLM.from_pretrained(args.model)
    book = tokenize_text(lm.tokenizer, load_book("10146"))
    cfg = TrainConfig(objective="ntp", window_size=512, memory_width=64, lr=3e-2)
    memory = memorize_text(lm, lm.tokenizer.decode(book[4096:5120]), cfg, progress=False).learner.full_memory()
    dense = lm.to_dense(memory).eval()
    work = Path(args.fused_out).parent if args.fused_out else Path(tempfile.mkdtemp(prefix="locas-engines-"))
    fused = Path(args.fused_out) if args.fused_out else work / "fused"
    dense.save_pretrained(fused)
    lm.tokenizer.save_pretrained(fused)
    other = tokenize_text(lm.tokenizer, load_book("10321"))
    prompts = [other[4096 + k * 1000: 4096 + k * 1000 + args.prompt_tokens].tolist() for k in range(args.prompts)]
    (fused / "prompts.json").write_text(json.dumps(prompts))
    if args.fused_only:
        print(f"wrote {fused}")
        return
    hf = [hf_run(dense, ids, args.new_tokens) for ids in prompts]
    hf_tps = args.prompts * args.new_tokens / sum(h[2] for h in hf)

    from llama_cpp import Llama

    rows, record = [["transformers (fused, f32)", "-", 1.0, 0.0, 0.0, hf_tps]], {}
    for dtype in ("f32", "f16", "q8_0"):
        path = export_gguf(fused, work / f"fused-{dtype}.gguf", dtype=dtype, progress=False)
        llm = Llama(model_path=str(path), n_ctx=args.prompt_tokens + args.new_tokens + 16, n_threads=args.threads,
                    logits_all=True, verbose=False)
        equal, top1, diffs, decode = 0, [], [], 0.0
        for ids, (hf_logp, hf_out, _) in zip(prompts, hf):
            logp, out, dt = llama_run(llm, ids, args.new_tokens)
            equal += out == hf_out
            top1.append(float(np.mean(logp.argmax(-1) == hf_logp.argmax(-1))))
            diffs.append(np.abs(logp - hf_logp))
            decode += dt
        d = np.concatenate([x.ravel() for x in diffs])
        record[dtype] = {"greedy_equal": equal, "prompts": len(prompts), "top1": float(np.mean(top1)),
                         "mean_abs_dlogp": float(d.mean()), "max_abs_dlogp": float(d.max()),
                         "tokens_per_s": args.prompts * args.new_tokens / decode, "bytes": path.stat().st_size}
        r = record[dtype]
        rows.append([f"llama.cpp GGUF {dtype}", f"{equal}/{len(prompts)}", r["top1"], r["mean_abs_dlogp"],
                     r["max_abs_dlogp"], r["tokens_per_s"]])
        print(rows[-1], flush=True)
        del llm
    header = ["engine", "greedy equal", "top-1", "mean |dlogp|", "max |dlogp|", "tok/s"]
    print(format_table(header, rows))
    out = RESULTS / ("engines.json" if args.model == "smollm2-135m" else f"engines-{args.model}.json")
    write_json(out, {"benchmark": "engines", "model": f"{args.model} + r64 memory fused",
                     "intermediate_size": dense.config.intermediate_size, "transformers_tokens_per_s": hf_tps,
                     "llama_cpp": record, "config": vars(args), "markdown": markdown_table(header, rows)})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
