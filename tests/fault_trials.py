"""Kill trials: SIGKILL `locas memorize`, `locas fuse` and `locas pg19 --checkpoint-every 1` at random moments.

After every kill the output path must hold the previous valid artefact or a new valid one, and an
interrupted `pg19` must finish with `--resume` on the numbers of an uninterrupted run. Used by
tests/test_faults.py (a few trials) and benchmarks/faults.py (30 and more).

    >>> report = run_trials(workdir, trials=30, seed=0)     # {"trials", "killed", "during_write", "broken", ...}
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
COMMANDS = ("memorize", "fuse", "pg19")


def locas(*argv) -> list[str]:
    return [sys.executable, "-m", "locas", *map(str, argv)]


def setup(root: Path) -> dict:
    """A tiny word-level model, a text, a first memory and a first fused checkpoint (the 'previous' artefacts)."""
    from golden_cases import doc_file, word_model

    root.mkdir(parents=True, exist_ok=True)
    model, text = word_model(root), doc_file(root, 2)
    common = ["--model", model, "--device", "cpu"]
    world = {"root": root, "model": model, "text": text, "common": common}
    world["memorize"] = ["memorize", text, "-o", root / "m.locas", "--overwrite", "--objective", "ntp",
                         "--window-size", 16, "--memory-width", 4, "--epochs", 12, *common]
    world["fuse"] = ["fuse", "--memory", root / "m.locas", "-o", root / "fused", "--overwrite", *common]
    world["pg19"] = ["pg19", "--book", text, "--method", "locas", "--window-size", 16, "--memory-width", 4,
                     "--epochs", 4, "--checkpoint-every", 1, *common]
    for name in ("memorize", "fuse"):
        subprocess.run(locas(*world[name]), env=ENV, check=True, capture_output=True, timeout=600)
    ref = root / "pg19-ref"
    t0 = time.perf_counter()
    subprocess.run(locas(*world["pg19"], "-o", ref), env=ENV, check=True, capture_output=True, timeout=600)
    world["pg19_seconds"] = time.perf_counter() - t0
    world["pg19_ref"] = _window_nll(ref)
    return world


def _window_nll(run: Path) -> list[float]:
    return json.loads((run / "results.json").read_text())["per_book"]["locas"][0]["window_nll"]


def _valid_memory(path: Path) -> bool:
    from locas.core.files import load_memory

    try:
        return bool(math.isfinite(float(load_memory(path).abs().sum())))
    except Exception:
        return False


def _valid_checkpoint(path: Path) -> bool:
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        with torch.no_grad():
            return bool(torch.isfinite(model(input_ids=torch.tensor([[3, 4, 5]])).logits).all())
    except Exception:
        return False


def _tmp_leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*.tmp")]


def trial(world: dict, command: str, rng: random.Random, index: int) -> dict:
    """Start ``command``, SIGKILL it after a random delay, check what is left (and resume pg19)."""
    root = world["root"]
    argv = list(world[command])
    run = root / f"pg19-{index}" if command == "pg19" else None
    if run is not None:
        argv += ["-o", run]
    before = set(_tmp_leftovers(root))
    proc = subprocess.Popen(locas(*argv), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    delay = rng.uniform(0.3, 1.1) * world.get(f"{command}_seconds", world["pg19_seconds"])
    aimed = index % 2 == 1  # every other trial aims at a write: killed as soon as a temporary file appears
    t0, killed = time.perf_counter(), False
    while proc.poll() is None:
        writing = aimed and set(_tmp_leftovers(root)) - before
        if writing or (not aimed and time.perf_counter() - t0 >= delay) or time.perf_counter() - t0 > 600:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed = True
            break
        time.sleep(0.0005 if aimed else 0.01)
    during_write = bool(set(_tmp_leftovers(root)) - before)  # a temporary file the kill left mid-write
    for p in _tmp_leftovers(root):  # litter of the killed process (never the artefact itself): cleared
        if p not in before:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    out = {"command": command, "aimed_at_write": aimed, "killed": killed,
           "at_s": round(time.perf_counter() - t0, 2), "during_write": during_write}
    if command == "memorize":
        out["valid"] = _valid_memory(root / "m.locas")
    elif command == "fuse":
        out["valid"] = _valid_checkpoint(root / "fused")
    else:
        done = subprocess.run(locas(*argv, "--resume"), env=ENV, capture_output=True, text=True, timeout=600)
        got = _window_nll(run) if done.returncode == 0 else None
        ref = world["pg19_ref"]
        out["valid"] = got is not None and len(got) == len(ref) and all(
            abs(a - b) <= 1e-6 * max(abs(b), 1.0) for a, b in zip(got, ref))
        out["resume_exact"] = got == ref
    return out


def run_trials(root: Path | None = None, trials: int = 30, seed: int = 0, progress=print, world=None) -> dict:
    """``trials`` kills, cycling memorize, fuse, pg19; ``world`` reuses a ``setup`` (else one is made in root)."""
    world = world or setup(Path(root))
    for name in ("memorize", "fuse"):  # how long a whole run takes, to spread the kills over it
        if f"{name}_seconds" not in world:
            t0 = time.perf_counter()
            subprocess.run(locas(*world[name]), env=ENV, check=True, capture_output=True, timeout=600)
            world[f"{name}_seconds"] = time.perf_counter() - t0
    rng = random.Random(seed)
    rows = []
    for i in range(trials):
        row = trial(world, COMMANDS[i % len(COMMANDS)], rng, i)
        rows.append(row)
        progress(f"trial {i + 1}/{trials}: {row}")
    return {"trials": len(rows), "killed": sum(r["killed"] for r in rows),
            "during_write": sum(r["during_write"] for r in rows), "broken": sum(not r["valid"] for r in rows),
            "resumed_exactly": sum(r.get("resume_exact", False) for r in rows if r["command"] == "pg19"),
            "seconds": {k: round(world[f"{k}_seconds"], 2) for k in COMMANDS}, "rows": rows}
