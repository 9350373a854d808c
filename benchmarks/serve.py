"""Serving benchmark: one model, many memories, over real HTTP on loopback, side by side in one process.

SmolLM2-135M behind `locas serve` (``locas.serve.app.serving``: FastAPI + uvicorn in a thread,
continuous batching, max batch 16, max wait 10 ms). C concurrent clients (the official ``openai`` client, one thread
each, closed loop: a client sends its next request when its last one is answered), each request
``--new-tokens`` (64) greedy tokens with ``ignore_eos`` so every request costs the same:

  (a) none     every client on the base model (no memory)
  (b) own      every client on its own memory: 16 Locas-GLU memories (r=64), each trained (NTP, one
               pass) on a different 2K-token passage of the PG-19 books in ../shared/data
  (c) serial   the requests of (b) at C=16 served one at a time (one client)

At each C the modes alternate, one request per client a round (none, own, none, own, ...), so that
the machine's drift over the run falls on both alike.

Reports tokens/s and p50/p95 request latency per (mode, C), the ratios (b)/(a) at every C
(target >= 0.8) and (b)@16 / (c) (target >= 3), a JSON record and a plot of throughput vs C.

    flock /tmp/locas-cpu.lock python benchmarks/serve.py --quick    # ~3 min: 1 request per client
    flock /tmp/locas-cpu.lock python benchmarks/serve.py            # ~8 min: 3 requests per client

Writes benchmarks/results/serve[-quick].json and .png.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from locas import LocasForCausalLM
from locas.data.pg19 import load_book
from locas.eval.report import format_table, line_plot, markdown_table, write_json
from locas.learn.config import TrainConfig
from locas.learn.memorize import memorize_text
from locas.serve.app import Server, serving
from locas.text.tokens import tokenize_text

RESULTS = Path(__file__).parent / "results"
BOOKS = ("10146", "10321", "10356", "10762")


def passages(lm, count: int, tokens: int) -> list[str]:
    """``count`` passages of ``tokens`` tokens, taken in turn from the books (a different stretch each)."""
    out = []
    per_book = -(-count // len(BOOKS))
    for book in BOOKS:
        ids = tokenize_text(lm.tokenizer, load_book(book))
        for k in range(per_book):
            start = 4096 + k * tokens  # past the Gutenberg front matter
            out.append(lm.tokenizer.decode(ids[start:start + tokens]))
    return out[:count]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def run_load(url: str, requests: list[list[dict]]) -> dict:
    """Client ``i`` sends ``requests[i]`` one after another; all clients start together."""
    from openai import OpenAI

    latencies: list[float] = []
    tokens = [0]
    lock = threading.Lock()
    start = threading.Barrier(len(requests) + 1)
    errors: list[str] = []

    def client(mine: list[dict]):
        api = OpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=600)
        start.wait()
        for body in mine:
            t0 = time.perf_counter()
            try:
                out = api.completions.create(**body)
            except Exception as exc:  # reported, and the run counts as failed
                errors.append(str(exc)[:200])
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)
                tokens[0] += out.usage.completion_tokens

    threads = [threading.Thread(target=client, args=(r,)) for r in requests]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return {"requests": len(latencies), "tokens": tokens[0], "wall_s": wall, "tokens_per_s": tokens[0] / wall,
            "p50_s": statistics.median(latencies), "p95_s": percentile(latencies, 0.95), "latencies": latencies}


def merge_runs(runs: list[dict]) -> dict:
    """Rounds of one mode as one record: tokens over the summed wall time, latencies pooled."""
    latencies = [x for r in runs for x in r["latencies"]]
    tokens, wall = sum(r["tokens"] for r in runs), sum(r["wall_s"] for r in runs)
    return {"requests": len(latencies), "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "p50_s": statistics.median(latencies), "p95_s": percentile(latencies, 0.95), "latencies": latencies}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="one request per client, one training window per memory")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--requests", type=int, default=None, help="requests per client (default 3; quick 1)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--width", type=int, default=64, help="memory width r")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    levels = [int(c) for c in args.concurrency.split(",")]
    per_client = args.requests or (1 if args.quick else 3)
    clients = max(levels)

    lm = LocasForCausalLM.from_pretrained("smollm2-135m", dtype=args.dtype, device=args.device)
    texts = passages(lm, clients, 1024 if args.quick else 2048)
    cfg = TrainConfig(objective="ntp", window_size=1024, memory_width=args.width, lr=3e-2)
    store_dir = tempfile.mkdtemp(prefix="locas-serve-bench-")
    server = Server(lm, store_dir, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
    t0 = time.perf_counter()
    for i, text in enumerate(texts):
        result = memorize_text(lm, text, cfg, progress=False)
        server.store.save("public", f"doc-{i}", result.learner.full_memory())
    train_s = time.perf_counter() - t0
    print(f"{clients} memories (r={args.width}) trained in {train_s:.0f} s", flush=True)
    prompts = [text[:200] for text in texts]  # each client continues the start of its own passage

    def body(i: int, memory: bool) -> dict:
        return {"model": f"doc-{i}" if memory else server.model_id, "prompt": prompts[i], "temperature": 0,
                "max_tokens": args.new_tokens, "extra_body": {"ignore_eos": True}}

    results: dict[str, dict] = {}
    for i in range(clients):  # every memory in the server's cache, as on a server that has been up a while
        server.store.get("public", f"doc-{i}")
    with serving(server) as url:
        run_load(url, [[body(0, True)]])  # warm-up
        for c in levels:  # the two modes alternate, one request per client a round, so drift hits both alike
            rounds: dict[str, list] = {"none": [], "own": []}
            for _ in range(per_client):
                for mode, memory in (("none", False), ("own", True)):
                    rounds[mode].append(run_load(url, [[body(i, memory)] for i in range(c)]))
            for mode, runs in rounds.items():
                r = merge_runs(runs)
                results[f"{mode}@{c}"] = {"mode": mode, "concurrency": c, **r}
                print(f"  {mode:6s} C={c:2d}: {r['tokens_per_s']:7.1f} tok/s  p50 {r['p50_s']:6.2f} s  "
                      f"p95 {r['p95_s']:6.2f} s", flush=True)
        serial = [[body(i, True) for _ in range(per_client) for i in range(clients)]]
        r = run_load(url, serial)
        results["serial"] = {"mode": "serial", "concurrency": 1, **r}
        print(f"  serial      : {r['tokens_per_s']:7.1f} tok/s  p50 {r['p50_s']:6.2f} s", flush=True)
        steps, shared, rows = server.batcher.steps, server.batcher.shared_steps, server.batcher.rows

    ratios = {f"own/none@{c}": results[f"own@{c}"]["tokens_per_s"] / results[f"none@{c}"]["tokens_per_s"]
              for c in levels}
    ratios[f"own@{clients}/serial"] = results[f"own@{clients}"]["tokens_per_s"] / results["serial"]["tokens_per_s"]
    targets = {**{f"own/none@{c}": 0.8 for c in levels}, f"own@{clients}/serial": 3.0}
    header = ["mode", "C", "tokens/s", "p50 s", "p95 s", "requests"]
    rows_ = [[v["mode"], v["concurrency"], round(v["tokens_per_s"], 1), round(v["p50_s"], 2),
              round(v["p95_s"], 2), v["requests"]] for v in results.values()]
    print(format_table(header, rows_))
    ratio_rows = [[k, round(v, 3), targets[k], "met" if v >= targets[k] else "MISSED"] for k, v in ratios.items()]
    print(format_table(["ratio", "measured", "target", ""], ratio_rows))

    name = "serve-quick" if args.quick else "serve"
    record = {"benchmark": "serve", "model": "smollm2-135m", "dtype": args.dtype, "device": str(lm.device),
              "threads": args.threads, "memories": clients, "width": args.width, "new_tokens": args.new_tokens,
              "requests_per_client": per_client, "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
              "train_s": train_s, "results": results, "ratios": ratios, "targets": targets,
              "steps": steps, "shared_steps": shared, "rows": rows, "markdown": markdown_table(header, rows_) + "\n\n" +
              markdown_table(["ratio", "measured", "target", ""], ratio_rows)}
    write_json(RESULTS / f"{name}.json", record)
    series = {label: (levels, [results[f"{mode}@{c}"]["tokens_per_s"] for c in levels])
              for label, mode in (("(a) no memory", "none"), ("(b) own memory each", "own"))}
    series["(c) serial, own memory"] = (levels, [results["serial"]["tokens_per_s"]] * len(levels))
    line_plot(RESULTS / f"{name}.png", series, "concurrent clients", "generated tokens / s",
              title=f"locas serve, SmolLM2-135M on {lm.device}, {args.new_tokens} new tokens per request")
    print(f"wrote {RESULTS / name}.json and .png")


if __name__ == "__main__":
    main()
