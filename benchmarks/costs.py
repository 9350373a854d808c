"""Where the time goes: one PG-19 window, one serving step, and `locas ask` from start to exit, side by side in one
process (docs/PERFORMANCE.md). Wall-clock, best of ``--repeats`` (the machine is shared: absolute times are noise,
the ratios within one run are the result).

* window   SmolLM2-135M, the first 1,024 tokens of PG-19 book 10146, a Locas memory r = 64 on every layer:
           truncation's scoring pass; Locas's scoring pass with the memory, without and with the gradient; the
           backward; the guarded AdamW step with clipping. Both output-head paths: ``plain`` (the (T, V) logits,
           log-softmax and their gradients) and ``chunked`` (``core.head``).
* stream   the PG-19 protocol itself (``eval.pg19.run_method``) on the first 4,096 tokens: truncation and Locas
           (paper recipe, every layer) under each head path, twice, alternating; ratio of the best times.
* serving  one decoding step of 16 rows (64-token prompts): no memory, 16 different memories (float32, and their
           bfloat16 serving copies), one memory shared by all 16; the cost of laying out a new batch of 16 memories
           (``core.memory.batch_serving``); how far bfloat16 copies move greedy continuations of PG-19 passages
           (``--memory FILE``: a trained memory in every row instead of the random ones).
* compile  ``torch.compile`` of the decoder (in place, ``dynamic=False``) on the window above: how long compiling
           takes (the scoring graph and the training graph), truncation's pass and a Locas step eager and compiled
           (medians, eager first, same process), and how far the compiled NLL and memory gradient are from eager's.
* startup  `locas ask --memory m.locas "..." --max-new-tokens 16` as a user runs it, disk cache warm and cold (the
           page cache of the venv, the Python library, the model and the memory dropped first with
           ``posix_fadvise(DONTNEED)``, no root needed), with the import floor (importing torch and transformers'
           Llama modules, then ``os._exit`` as ``locas`` does).

    flock /tmp/locas-cpu.lock python benchmarks/costs.py           # about 6 min
    python benchmarks/costs.py --only window --profile             # + torch.profiler's op table of a step
    python benchmarks/costs.py --only compile                      # about 4 min with a cold compiler cache

Writes benchmarks/results/costs.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from locas import LocasForCausalLM, load_memory, save_memory
from locas.core import head
from locas.core.hub import default_model_dir
from locas.core.kvcache import cache_arg, new_cache
from locas.core.memory import ServingMemory, batch_serving
from locas.data.pg19 import load_book
from locas.eval.report import format_table, write_json
from locas.learn.config import TrainConfig
from locas.learn.learners import make_learner
from locas.learn.step import guarded_step, make_optimizer
from locas.text.tokens import tokenize_text

ROOT = Path(__file__).resolve().parents[1]


def best(fn, repeats: int) -> float:
    fn()  # warm-up
    return min(timed(fn) for _ in range(repeats))


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def one_window(lm):
    """The first 1,024 tokens of PG-19 book 10146 (1, T), truncation, a Locas learner (r = 64 on every layer, the
    paper's recipe) initialised on them, and its optimiser."""
    tokens = tokenize_text(lm.tokenizer, load_book("10146"), 1024)
    cfg = TrainConfig(window_size=1024, lr=3e-2, memory_width=64)
    truncate, locas = make_learner("truncate", lm, cfg), make_learner("locas", lm, cfg)
    locas.begin(tokens, (0, 1024))
    return tokens[None], truncate, locas, make_optimizer(locas.parameters(), cfg)


def window(lm, repeats: int, profile: bool) -> dict:
    """Each phase timed inside the same iteration (the medians over ``repeats`` + 1 iterations add up)."""
    ids, truncate, locas, optimizer = one_window(lm)

    def iteration() -> dict:
        laps, t = {}, time.perf_counter()

        def lap(name):
            nonlocal t
            now = time.perf_counter()
            laps[name], t = now - t, now

        with torch.no_grad():
            truncate.nll(ids)
            lap("truncate_s")
            locas.nll(ids)
            lap("memory_forward_s")
        optimizer.zero_grad(set_to_none=True)
        loss = locas.nll(ids)[0].mean()
        lap("forward_with_grad_s")
        loss.backward()
        lap("backward_s")
        guarded_step(locas, optimizer)
        lap("step_and_clip_s")
        return laps

    out = {}
    for chunked in (False, True):
        head.CHUNKED = chunked
        iteration()  # warm-up
        runs = [iteration() for _ in range(repeats + 1)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        med["locas_step_s"] = med["forward_with_grad_s"] + med["backward_s"] + med["step_and_clip_s"]
        med["ratio"] = med["locas_step_s"] / med["truncate_s"]
        out["chunked" if chunked else "plain"] = med
        if profile and chunked:
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as torch_profile

            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                iteration()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    head.CHUNKED = True
    return out


def streamed(lm, repeats: int) -> dict:
    from locas.eval.pg19 import run_method

    tokens = tokenize_text(lm.tokenizer, load_book("10146"), 4096)
    methods = {"truncate": TrainConfig(window_size=1024), "locas": TrainConfig(window_size=1024, lr=3e-2,
                                                                             memory_width=64)}
    runs: dict = {}
    for _ in range(repeats):
        for chunked in (False, True):
            head.CHUNKED = chunked
            for name, cfg in methods.items():
                r = run_method(lm, name, tokens, cfg, progress=False)
                runs.setdefault(("chunked" if chunked else "plain", name), []).append((r.wall_s, r.ppl))
    head.CHUNKED = True
    out = {}
    for path in ("plain", "chunked"):
        t, loc = min(runs[(path, "truncate")]), min(runs[(path, "locas")])
        out[path] = {"truncate_s": t[0], "locas_s": loc[0], "ratio": loc[0] / t[0], "truncate_ppl": t[1],
                     "locas_ppl": loc[1]}
    return out


def compiled(lm, repeats: int) -> dict:
    """Eager, then the decoder compiled in place: compile seconds, medians of truncation's pass and of a Locas step,
    and the compiled NLL and memory gradient against eager's at the same memory (no step taken between them)."""
    ids, truncate, locas, optimizer = one_window(lm)
    with torch.no_grad():  # values away from zero, so the memory changes the NLL and every channel has a gradient
        locas.memory[..., -1].normal_(0, 0.05, generator=torch.Generator().manual_seed(0))

    def score():
        with torch.no_grad():
            return truncate.nll(ids)

    def gradient():
        optimizer.zero_grad(set_to_none=True)
        nll = locas.nll(ids)
        nll.mean().backward()
        return nll.detach(), locas.memory.grad.clone()

    def step():
        gradient()
        guarded_step(locas, optimizer)

    def medians():
        return {"truncate_s": statistics.median(timed(score) for _ in range(repeats)),
                "locas_step_s": statistics.median(timed(step) for _ in range(repeats))}

    start = locas.memory.detach().clone()
    eager_score, (eager_nll, eager_grad) = score(), gradient()
    out = {"eager": medians()}
    with torch.no_grad():
        locas.memory.copy_(start)
    body = lm.model.get_decoder()
    body.compile(dynamic=False)
    out["compile_score_s"], out["compile_step_s"] = timed(score), timed(gradient)
    comp_score, (comp_nll, comp_grad) = score(), gradient()
    out["compiled"] = medians()
    body._compiled_call_impl = None  # back to eager for the other parts
    for name in ("eager", "compiled"):
        out[name]["ratio"] = out[name]["locas_step_s"] / out[name]["truncate_s"]
    out["max_score_diff"] = (comp_score - eager_score).abs().max().item()
    out["max_nll_diff"] = (comp_nll - eager_nll).abs().max().item()
    out["grad_rel_diff"] = ((comp_grad - eager_grad).norm() / eager_grad.norm()).item()
    return out


def evict_page_cache(paths) -> None:
    """Drop these files (directories walked) from the page cache: ``posix_fadvise(DONTNEED)`` on each, no root."""
    for root in map(Path, paths):
        for path in [root] if root.is_file() else (p for p in root.rglob("*") if p.is_file()):
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def serving(lm, repeats: int, memory_file: str | None = None) -> dict:
    B, P, steps = 16, 64, 8
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 40000, (B, P), generator=g)
    shape = (lm.num_layers, 1, 64, lm.hidden_size, 3)
    memories = [torch.randn(shape, generator=g) * 0.05 for _ in range(B)]
    ready = [ServingMemory.of(m) for m in memories]
    halves = [ServingMemory.of(m, torch.bfloat16) for m in memories]

    def decode(rows):
        lm.set_memory_channels(batch_serving(rows) if rows else None)
        with torch.no_grad():
            cache = new_cache(lm.model)
            logits = lm.model(input_ids=ids, use_cache=True, **cache_arg(cache)).logits
            nxt = logits[:, -1:].argmax(-1)
            t = time.perf_counter()
            for _ in range(steps):
                nxt = lm.model(input_ids=nxt, use_cache=True, **cache_arg(cache)).logits[:, -1:].argmax(-1)
        lm.set_memory(None)
        return (time.perf_counter() - t) / steps

    out = {name: min(decode(rows) for _ in range(repeats))
           for name, rows in (("none", None), ("own", ready), ("shared", [ready[0]] * B), ("own_bf16", halves))}
    out["layout_s"] = best(lambda: batch_serving(ready), repeats)
    out["own_over_none"] = out["none"] / out["own"]
    out["shared_over_none"] = out["none"] / out["shared"]
    out["own_bf16_over_none"] = out["none"] / out["own_bf16"]
    if memory_file:  # a trained memory in every row instead of the random ones
        memories = [load_memory(memory_file, model=lm)[:, :1]] * B
    out["bf16_exactness"] = bf16_exactness(lm, memories)
    return out


def bf16_exactness(lm, memories: list[torch.Tensor], prompt: int = 64, steps: int = 32) -> dict:
    """Row b continues a 64-token PG-19 passage (book 10146, one every 1,000 tokens) greedily under memory b, from
    float32 and from bfloat16 serving copies: how many continuations are identical, the share of positions whose
    tokens agree, and the largest difference of the first position's logits (the memory's own effect beside it)."""
    text = tokenize_text(lm.tokenizer, load_book("10146"), 1000 * len(memories))
    ids = torch.stack([text[i * 1000:i * 1000 + prompt] for i in range(len(memories))])  # (B, P)

    def greedy(dtype):
        lm.set_memory_channels(None if dtype is None else batch_serving([ServingMemory.of(m, dtype) for m in memories]))
        with torch.no_grad():
            cache = new_cache(lm.model)
            logits = lm.model(input_ids=ids, use_cache=True, **cache_arg(cache)).logits[:, -1]  # (B, V)
            first, tokens = logits, [logits.argmax(-1, keepdim=True)]
            for _ in range(steps - 1):
                tokens.append(lm.model(input_ids=tokens[-1], use_cache=True,
                                       **cache_arg(cache)).logits[:, -1:].argmax(-1))
        lm.set_memory(None)
        return first, torch.cat(tokens, dim=1)  # (B, V), (B, steps)

    base, _ = greedy(None)
    full, full_tokens = greedy(torch.float32)
    half, half_tokens = greedy(torch.bfloat16)
    same = half_tokens == full_tokens
    return {"rows": len(memories), "steps": steps, "identical_rows": int(same.all(1).sum()),
            "tokens_agree": same.float().mean().item(), "max_logit_diff": (half - full).abs().max().item(),
            "memory_effect": (full - base).abs().max().item()}


def startup(lm, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.locas"
        save_memory(lm.init_memory(torch.arange(100, 164)[None], width=64), path, model=lm)
        env = {**os.environ, "OMP_NUM_THREADS": "2"}
        argv = [str(Path(sys.executable).with_name("locas")), "ask", "Who is Tom?", "--memory", str(path),
                "--max-new-tokens", "16"]
        floor = [sys.executable, "-c", "import os, torch, transformers.models.llama.modeling_llama; os._exit(0)"]
        run = lambda cmd: subprocess.run(cmd, env=env, capture_output=True, check=True)  # noqa: E731
        cached = [sys.prefix, Path(os.__file__).parent, default_model_dir(), path, ROOT / "src"]
        cold = []
        for _ in range(repeats):
            evict_page_cache(cached)
            cold.append(timed(lambda: run(argv)))
        return {"ask_s": best(lambda: run(argv), repeats), "ask_cold_s": min(cold),
                "import_floor_s": best(lambda: run(floor), repeats)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=("window", "stream", "compile", "serving", "startup"), action="append")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--profile", action="store_true", help="print torch.profiler's op table of one chunked step")
    p.add_argument("--memory", default=None, help="serving: a trained memory file whose bfloat16 serving copy is "
                                                  "compared with float32 (default: the 16 random memories)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/costs.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    lm = LocasForCausalLM.from_pretrained("smollm2-135m")
    parts = args.only or ["window", "stream", "compile", "serving", "startup"]
    record = {"threads": args.threads, "repeats": args.repeats}
    if "window" in parts:
        record["window"] = window(lm, args.repeats, args.profile)
        rows = [[name] + [round(v, 3) for v in r.values()] for name, r in record["window"].items()]
        print(format_table(["head", "truncate s", "memory fwd s", "fwd+grad s", "backward s", "step s", "Locas s",
                            "Locas / truncate"], rows))  # medians of phases timed in the same iterations
    if "stream" in parts:
        record["stream"] = streamed(lm, 2)
        rows = [[name, r["truncate_s"], r["locas_s"], r["ratio"], r["truncate_ppl"], r["locas_ppl"]]
                for name, r in record["stream"].items()]
        print(format_table(["head", "truncate s", "Locas s", "ratio", "truncate ppl", "Locas ppl"], rows))
    if "compile" in parts:
        record["compile"] = c = compiled(lm, args.repeats)
        print(format_table(["decoder", "truncate s", "Locas step s", "Locas / truncate"],
                           [[name, c[name]["truncate_s"], c[name]["locas_step_s"], c[name]["ratio"]]
                            for name in ("eager", "compiled")]))
        print(f"compiling: scoring graph {c['compile_score_s']:.1f} s, training graph {c['compile_step_s']:.1f} s; "
              f"compiled vs eager: NLL within {c['max_nll_diff']:.2e} (scoring {c['max_score_diff']:.2e}), memory "
              f"gradient {c['grad_rel_diff']:.2e} relative")
    if "serving" in parts:
        record["serving"] = s = serving(lm, args.repeats, args.memory)
        e = s["bf16_exactness"]
        print(f"decoding step, 16 rows: none {s['none'] * 1e3:.1f} ms, 16 memories {s['own'] * 1e3:.1f} ms "
              f"({s['own_over_none']:.3f}), shared {s['shared'] * 1e3:.1f} ms ({s['shared_over_none']:.3f}), 16 in "
              f"bfloat16 {s['own_bf16'] * 1e3:.1f} ms ({s['own_bf16_over_none']:.3f}); laying out 16 memories "
              f"{s['layout_s'] * 1e3:.1f} ms\nbfloat16 copies against float32: {e['identical_rows']} of {e['rows']} "
              f"greedy continuations of {e['steps']} tokens identical, {e['tokens_agree']:.3f} of the tokens agree; "
              f"first logits differ by at most {e['max_logit_diff']:.4f} (the memory moves them by up to "
              f"{e['memory_effect']:.3f})")
    if "startup" in parts:
        record["startup"] = s = startup(lm, args.repeats)
        print(f"locas ask {s['ask_s']:.2f} s warm, {s['ask_cold_s']:.2f} s cold "
              f"(import floor {s['import_floor_s']:.2f} s)")
    write_json(args.out, record)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
