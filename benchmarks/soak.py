"""Soak: `locas serve` on SmolLM2-135M for half an hour of mixed traffic, with kills, stops and an overload.

A real `locas serve` process (API keys on, max batch 16, ``--memory-cache 8`` so that the 24 memories of
the pool do not all stay loaded and eviction runs) and real clients on loopback (tests/soak_traffic.py:
the official ``openai`` async client for completions and chat, streamed or not, with no memory, one or two
memories, clients that hang up mid-stream, wrong keys and another key's memory; ``httpx`` for uploads,
downloads checked by sha256, deletes, lists, and a memorisation job every minute). The run:

  1. setup     24 memories trained (NTP, one pass, r=32) on 512-token PG-19 passages, uploaded; probe answers
  2. knee      the most the server answers (the mix in a closed loop of 32 clients: max batch 16 + its queue), then
               open loops (Poisson arrivals) at 0.3 ... 1.05 of that: the knee is the highest offered rate at which
               at most 1 % of requests are shed
  3. soak      an open loop (Poisson arrivals) at 80 % of the knee's throughput for --minutes, with 6 SIGKILLs
               and 2 SIGTERMs, each followed by a restart and an audit: every acknowledged memory downloads with
               the sha256 of its upload, every deleted one stays gone, every accepted job has its record
  4. overload  open loop at 2x the knee (shedding with 503 + Retry-After expected), then 0.5x (recovery);
               then 3,000 connections that send nothing, beside 0.5x load (the server must close them all)
  5. end       jobs finish, final audit (no job left queued or running), probe answers again (must be identical),
               SIGTERM (exit status 0), temporary files left in the memory directory counted

Resident memory and open file descriptors of the server are sampled every 5 s. Prints the figures against the
server issue's targets and writes benchmarks/results/soak[-quick].json and .png (throughput, latency and
resident memory over time, kills and stops marked), and -knee.png (the throughput curve).

    flock /tmp/locas-cpu.lock python benchmarks/soak.py              # ~45 min
    flock /tmp/locas-cpu.lock python benchmarks/soak.py --quick      # ~10 min: a 4-minute soak, shorter phases
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from locas.eval.report import line_plot, plt_agg, write_json  # noqa: E402
from soak_traffic import ServerProcess, Traffic, audit, idle_flood, probes, summarize, upload_pool, wait_for_jobs  # noqa: E402

RESULTS = Path(__file__).parent / "results"
PROMPTS = ["The old house at the end of the street", "She opened the letter and read", "In the morning the ship",
           "He told them that the money", "Question: Who wrote the letter? Answer:", "The river"]


def train_pool(count: int, width: int, tokens: int, root: Path) -> tuple[dict[str, bytes], list[str]]:
    """``count`` real memories on different PG-19 passages (id -> file bytes), and texts for the jobs."""
    from locas import LocasForCausalLM, save_memory
    from locas.learn.config import TrainConfig
    from locas.learn.memorize import memorize_text
    from serve import passages

    lm = LocasForCausalLM.from_pretrained("smollm2-135m")
    texts = passages(lm, count + 4, tokens)
    cfg = TrainConfig(objective="ntp", window_size=tokens, memory_width=width, lr=3e-2)
    files = {}
    t0 = time.perf_counter()
    for i, text in enumerate(texts[:count]):
        path = root / f"pool-{i}.locas"
        save_memory(memorize_text(lm, text, cfg, progress=False).learner.full_memory(), path, model=lm)
        files[f"pool-{i}"] = path.read_bytes()
    print(f"{count} memories (r={width}, {len(files['pool-0']) / 1e6:.1f} MB each) trained in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    job_texts = [lm.tokenizer.decode(lm.tokenizer(t)["input_ids"][:256]) for t in texts[count:]]
    return files, job_texts


def steady_growth(samples: list[dict], start: float, end: float, warmup_s: float) -> dict:
    """Resident memory and file descriptors of one server life at one steady load, from ``start + warmup_s`` to
    ``end``: the median of the first minute against the median of the last."""
    rows = [s for s in samples if "rss_mib" in s and start + warmup_s <= s["t"] <= end]
    if len(rows) < 2:  # a soak too short for its warm-up (--quick with few minutes): from the start of the soak
        rows = [s for s in samples if "rss_mib" in s and start <= s["t"] <= end]
    early = [s for s in rows if s["t"] < rows[0]["t"] + 60]
    late = [s for s in rows if s["t"] >= rows[-1]["t"] - 60]
    rss0, rss1 = (statistics.median(s["rss_mib"] for s in part) for part in (early, late))
    fd0, fd1 = (statistics.median(s["fds"] for s in part) for part in (early, late))
    lives: dict[int, list[dict]] = {}
    for s in samples:
        if "rss_mib" in s:
            lives.setdefault(s["epoch"], []).append(s)
    return {"from_s": rows[0]["t"], "to_s": rows[-1]["t"], "rss_first_minute_mib": rss0, "rss_last_minute_mib": rss1,
            "rss_growth": rss1 / rss0 - 1, "fds_first_minute": fd0, "fds_last_minute": fd1,
            "rss_peak_per_life_mib": {e: max(s["rss_mib"] for s in r) for e, r in lives.items()},
            "fds_peak_per_life": {e: max(s["fds"] for s in r) for e, r in lives.items()}}


def timeline(records: list[dict], samples: list[dict], events: list[dict], bin_s: float) -> dict:
    """Per ``bin_s`` bin: answered requests/s, p50 and p99 of generation latency; the samples; the events."""
    end = max(r["t"] + r["total"] for r in records)
    bins = []
    for k in range(int(end // bin_s) + 1):
        inside = [r for r in records if k * bin_s <= r["t"] + r["total"] < (k + 1) * bin_s]
        s = summarize(inside) if inside else None
        bins.append({"t": (k + 0.5) * bin_s, "answered_per_s": (s["answered_per_s"] * s["seconds"] / bin_s) if s else 0,
                     "p50_s": s and s["latency_p50_s"], "p99_s": s and s["latency_p99_s"]})
    return {"bins": bins, "samples": samples, "events": [{k: e[k] for k in ("t", "how")} for e in events]}


def plot(path: Path, tl: dict, phases: dict) -> None:
    plt = plt_agg()
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), dpi=110, sharex=True)
    minutes = lambda xs: [x / 60 for x in xs]  # noqa: E731
    b = tl["bins"]
    axes[0].plot(minutes([x["t"] for x in b]), [x["answered_per_s"] for x in b], linewidth=1.2)
    axes[0].set_ylabel("answered / s")
    for key, label in (("p50_s", "p50"), ("p99_s", "p99")):
        pts = [(x["t"], x[key]) for x in b if x[key] is not None]
        axes[1].plot(minutes([p[0] for p in pts]), [p[1] for p in pts], label=f"{label} latency", linewidth=1.2)
    axes[1].set_ylabel("seconds")
    axes[1].set_yscale("log")
    axes[1].legend(fontsize=8)
    rows = [s for s in tl["samples"] if "rss_mib" in s]
    axes[2].plot(minutes([s["t"] for s in rows]), [s["rss_mib"] for s in rows], ".", markersize=2)
    axes[2].set_ylabel("server RSS (MiB)")
    axes[2].set_xlabel("minutes")
    for ax in axes:
        for e in tl["events"]:
            ax.axvline(e["t"] / 60, color="red" if e["how"] == "kill" else "orange", alpha=0.5, linewidth=1)
        for name, (t0, t1) in phases.items():
            if name != "soak":
                ax.axvspan(t0 / 60, t1 / 60, alpha=0.08, color="grey")
        ax.grid(alpha=0.3)
    axes[0].set_title("locas serve soak: red = SIGKILL + restart, orange = SIGTERM + restart, grey = knee/overload")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


async def run(args, server: ServerProcess, files: dict[str, bytes], job_texts: list[str]) -> dict:
    pool = sorted(files, key=lambda k: int(k.split("-")[1]))
    traffic = Traffic(server, pool=pool, files=[files[k] for k in pool[:4]], texts=job_texts, prompts=PROMPTS,
                      max_tokens=args.max_tokens, seed=args.seed,
                      job_settings={"epochs": 1, "memory_width": 16, "window_size": 256})
    idle_fds = [server.sample()["fds"]]  # before any traffic: compared with the same after all of it
    await upload_pool(server.url, files, traffic.ledger)
    probe_memories = [None, pool[0], [pool[1], pool[2]]]
    before = await probes(server.url, PROMPTS, probe_memories)
    await traffic.run("job")  # the first job loads the jobs' own copy of the model: before anything is measured
    await wait_for_jobs(traffic.http, timeout=600)
    phases, out = {}, {}
    sampler = asyncio.create_task(traffic.sample_every(args.sample_s, float("inf")))

    # the knee: the most the server answers (a closed loop of max batch + max queue clients: every admitted place
    # taken), then open loops at fractions of it; the knee is the highest offered rate with at most 1 % shed
    t0 = traffic.now()
    top = summarize(await traffic.closed_loop(args.clients, args.knee_s, phase="closed"))
    print(f"  closed loop, {args.clients} clients: {top['answered_per_s']:.2f} answered/s, generation p99 "
          f"{top['latency_p99_s']:.2f} s", flush=True)
    curve = []
    for fraction in args.fractions:
        offered = fraction * top["answered_per_s"]
        s = summarize(await traffic.open_loop(offered, args.knee_s, phase=f"open@{fraction:g}"))
        curve.append({"offered_per_s": offered, "shed_fraction": s["shed"] / s["requests"],
                      "answered_per_s_offering": s["answered"] / args.knee_s,  # answered / seconds of offering
                      **{k: s[k] for k in ("requests", "answered_per_s", "generations_per_s", "latency_p50_s",
                                           "latency_p99_s", "ttft_p99_s", "unexpected")}})
        print(f"  offered {offered:5.2f}/s: answered {curve[-1]['answered_per_s_offering']:5.2f}/s, shed {s['shed']}, "
              f"generation p50 "
              f"{s['latency_p50_s']:.2f} s, p99 {s['latency_p99_s']:.2f} s", flush=True)
    phases["knee"] = (t0, traffic.now())
    knee = ([p for p in curve if p["shed_fraction"] <= 0.01] or curve[:1])[-1]
    rate = knee["offered_per_s"]
    print(f"knee: {rate:.2f} requests/s offered (generation p99 {knee['latency_p99_s']:.2f} s); soak at "
          f"{0.8 * rate:.2f}/s for {args.minutes:g} min", flush=True)

    # soak with faults: the first third without, then 6 kills and 2 stops spread over the rest
    soak_s = args.minutes * 60
    t0 = traffic.now()
    faults = ["kill", "kill", "stop", "kill", "kill", "stop", "kill", "kill"]
    at = [soak_s / 3 + k * (soak_s * 0.6) / (len(faults) - 1) for k in range(len(faults))]

    async def faults_at():
        for how, when in zip(faults, at):
            await asyncio.sleep(max(0.0, t0 + when - traffic.now()))
            event = await traffic.fault(how)
            print(f"  {traffic.now() / 60:5.1f} min: {how}, restarted in {event['restart_s']:.1f} s, "
                  f"audit {event['audit']}", flush=True)

    await asyncio.gather(traffic.open_loop(0.8 * rate, soak_s, phase="soak"), faults_at(),
                         traffic.jobs_every(args.job_every_s, t0 + soak_s))
    phases["soak"] = (t0, traffic.now())
    soak = summarize([r for r in traffic.records if r.get("phase") == "soak"])
    print(f"soak: {soak['requests']} requests, by status {soak['by_status']}, unexpected {soak['unexpected']}",
          flush=True)

    # overload: 2x the knee, then 0.5x
    t0 = traffic.now()
    for name, factor, seconds in (("twice_knee", 2.0, args.overload_s), ("recovery", 0.5, args.overload_s * 2 / 3)):
        t1 = traffic.now()
        s = summarize(await traffic.open_loop(factor * rate, seconds, phase=name))
        queue = [x.get("queued", 0) for x in traffic.samples if t1 <= x["t"]]
        rss = [x["rss_mib"] for x in traffic.samples if t1 <= x["t"] and "rss_mib" in x]
        out[name] = {"offered_per_s": factor * rate, **s, "max_queued": max(queue, default=0),
                     "max_rss_mib": max(rss, default=None)}
        print(f"  {name}: offered {factor * rate:.2f}/s, answered {s['answered_per_s']:.2f}/s, by status "
              f"{s['by_status']}, admitted generation p99 {s['latency_p99_s']:.2f} s, max queued "
              f"{out[name]['max_queued']}", flush=True)
    phases["overload"] = (t0, traffic.now())

    # 3,000 connections that never send a request, while the load goes on at 0.5x
    t0 = traffic.now()
    load, flood = await asyncio.gather(traffic.open_loop(0.5 * rate, args.flood_s, phase="idle_flood"),
                                       idle_flood(server.url, args.idle, hold_s=args.flood_s))
    out["idle_flood"] = {**summarize(load), "flood": flood}
    phases["idle_flood"] = (t0, traffic.now())
    print(f"  idle flood: {flood}; beside it {out['idle_flood']['by_status']}, generation p99 "
          f"{out['idle_flood']['latency_p99_s']:.2f} s", flush=True)

    await wait_for_jobs(traffic.http, timeout=600)
    final = await audit(traffic.http, traffic.ledger, jobs_final=True)
    after = await probes(server.url, PROMPTS, probe_memories)
    sampler.cancel()
    await traffic.aclose()
    await asyncio.sleep(8)  # past the server's keep-alive timeout: the clients' connections are closed
    idle_fds.append(server.sample()["fds"])
    rss = steady_growth(traffic.samples, phases["soak"][0], phases["soak"][0] + at[0], warmup_s=args.warmup_s)
    events = traffic.events
    return {"closed_loop": top, "curve": curve, "knee": knee, "soak_rate_per_s": 0.8 * rate, "soak": soak, **out,
            "phases": phases,
            "events": events, "final_audit": final, "probes_identical": before == after,
            "probes": {"count": len(before), "changed": sum(a != b for a, b in zip(before, after))},
            "resident": rss, "idle_fds": idle_fds, "not_sent": traffic.not_sent, "all": summarize(traffic.records),
            "timeline": timeline(traffic.records, traffic.samples, events, args.bin_s)}


def verdicts(r: dict) -> dict:
    """The server issue's targets, met or missed, with the figures."""
    audits = [e["audit"] for e in r["events"]] + [r["final_audit"]]
    lost = sum(a["lost"] + a["corrupt"] + a["resurrected"] + a["jobs_lost"] + a["jobs_failed_without_reason"]
               + a.get("jobs_stuck", 0) for a in audits) + r["final_audit"]["jobs_unfinished"]
    unexpected_5xx = r["all"]["server_errors"]
    knee_p99 = r["knee"]["latency_p99_s"]
    return {
        "soak: no 5xx but the documented 503s": (unexpected_5xx == 0, f"{unexpected_5xx} other 5xx; 503 while "
                                                f"draining {r['soak']['shed_draining']}, shed {r['soak']['shed']}"),
        "soak: no answer other than expected": (r["all"]["unexpected"] == 0, f"{r['all']['unexpected']} unexpected"),
        "nothing lost (memories, deletions, jobs) over every restart": (lost == 0, f"{lost} lost"),
        "probe answers identical before and after": (r["probes_identical"], f"{r['probes']['changed']} of "
                                                                          f"{r['probes']['count']} changed"),
        "RSS after warm-up grows <= 5 % (one life, steady load)": (
            r["resident"]["rss_growth"] <= 0.05,
            f"{r['resident']['rss_first_minute_mib']:.0f} -> {r['resident']['rss_last_minute_mib']:.0f} MiB "
            f"({100 * r['resident']['rss_growth']:+.1f} %) from {r['resident']['from_s'] / 60:.1f} to "
            f"{r['resident']['to_s'] / 60:.1f} min"),
        "file descriptors flat (idle before and after all traffic)": (
            r["idle_fds"][1] <= r["idle_fds"][0], f"{r['idle_fds'][0]} -> {r['idle_fds'][1]}; steady load "
            f"{r['resident']['fds_first_minute']:.0f} -> {r['resident']['fds_last_minute']:.0f}"),
        "no temporary files left": (not r["temporary_files"], f"{len(r['temporary_files'])} left"),
        "SIGTERM exits 0 every time": (all(e["returncode"] == 0 for e in r["server_exits"] if e["how"] == "SIGTERM"),
                                       str([e["returncode"] for e in r["server_exits"] if e["how"] == "SIGTERM"])),
        "overload 2x: p99 of admitted <= 3x the knee's": (
            r["twice_knee"]["latency_p99_s"] is not None and r["twice_knee"]["latency_p99_s"] <= 3 * knee_p99,
            f"{r['twice_knee']['latency_p99_s']:.2f} s vs {knee_p99:.2f} s at the knee "
            f"({r['twice_knee']['latency_p99_s'] / knee_p99:.2f}x)"),
        "overload 2x: sheds with 503, no other 5xx": (
            r["twice_knee"]["shed"] > 0 and r["twice_knee"]["server_errors"] == 0,
            f"{r['twice_knee']['shed']} shed of {r['twice_knee']['requests']}, max {r['twice_knee']['max_queued']} "
            f"queued, server RSS at most {r['twice_knee']['max_rss_mib']:.0f} MiB"),
        "idle connections closed without hurting others": (
            r["idle_flood"]["flood"]["closed_by_server"] == r["idle_flood"]["flood"]["opened"] == r["settings"]["idle"]
            and r["idle_flood"]["unexpected"] == 0,
            f"{r['idle_flood']['flood']['closed_by_server']} of {r['settings']['idle']} closed by the server, the last "
            f"after {r['idle_flood']['flood']['closed_after_s_max']:.1f} s; beside them generation p99 "
            f"{r['idle_flood']['latency_p99_s']:.2f} s (0.5x load after overload: "
            f"{r['recovery']['latency_p99_s']:.2f} s)"),
        "recovers after overload": (r["recovery"]["shed"] == 0 and r["recovery"]["unexpected"] == 0,
                                    f"{r['recovery']['shed']} shed at 0.5x"),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a 4-minute soak and shorter phases")
    ap.add_argument("--minutes", type=float, default=None, help="soak length (default: 30, quick: 4)")
    ap.add_argument("--memories", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    args.minutes = args.minutes or (4 if args.quick else 30)
    args.clients = 32  # --max-batch 16 + its queue of 16
    args.fractions = [0.3, 0.45, 0.6, 0.75, 0.9, 1.05]
    args.knee_s = 20 if args.quick else 40
    args.overload_s = 45 if args.quick else 90
    args.job_every_s = 60
    args.idle, args.flood_s = 3000, 30
    args.sample_s = 5
    args.bin_s = 15 if args.quick else 30
    args.warmup_s = 30 if args.quick else 120
    out = Path(args.out or RESULTS / f"soak{'-quick' if args.quick else ''}.json")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="locas-soak-") as tmp:
        root = Path(tmp)
        files, job_texts = train_pool(args.memories, width=32, tokens=512, root=root)
        server = ServerProcess(["--model", "smollm2-135m"], root / "memories", root / "server.log",
                               extra=["--memory-cache", "8", "--max-batch", "16", "--drain-timeout", "30"])
        server.start()
        try:
            result = asyncio.run(run(args, server, files, job_texts))
        finally:
            returncode = server.stop()
        result["server_exits"] = server.exits
        result["final_returncode"] = returncode
        result["restart_s"] = server.starts
        result["temporary_files"] = server.temporary_files()
    result["wall_s"] = time.perf_counter() - t0
    result["settings"] = {k: v for k, v in vars(args).items() if k != "out"}
    checks = verdicts(result)
    result["targets"] = {name: {"met": bool(ok), "figure": figure} for name, (ok, figure) in checks.items()}
    print()
    for name, (ok, figure) in checks.items():
        print(f"  {'met   ' if ok else 'MISSED'} {name}: {figure}")
    write_json(out, result)
    plot(out.with_suffix(".png"), result["timeline"], result["phases"])
    offered = [p["offered_per_s"] for p in result["curve"]]
    knee_png = out.with_name(f"{out.stem}-knee.png")
    line_plot(knee_png, {"answered": (offered, [p["answered_per_s_offering"] for p in result["curve"]]),
                         "offered (all answered)": (offered, offered)},
              xlabel="offered requests/s (open loop)", ylabel="answered requests/s",
              title=f"throughput curve; knee {result['knee']['offered_per_s']:.2f}/s (at most 1 % shed)")
    print(f"wrote {out}, {out.with_suffix('.png')} and {knee_png} ({result['wall_s'] / 60:.1f} min)")
    return 0 if all(ok for ok, _ in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
