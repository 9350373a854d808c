"""A `locas serve` on the tiny chat model, started one way for tests/test_serve.py, tests/test_schema_fuzz.py and
benchmarks/fuzz.py: the model, memory files for it, an upload helper and the running server; and a Schemathesis
run against it (the short one in the tests, the long one in the benchmark).

    >>> lm = served_lm()
    >>> with open_server(lm, memory_files(lm, tmp / "files"), tmp / "served") as (url, srv):
    ...     run = run_schemathesis(url, tmp / "fuzz", max_examples=3, scenarios=30)
    >>> run["failures"], len(run["requests"]), run["memories"]
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
import torch

from conftest import random_memory
from locas import save_memory
from locas.serve.app import Limits, Server, serving
from test_locomo_support import char_lm


def served_lm():
    """A tiny character-level chat model (``max_positions=256``, so context limits are cheap to hit)."""
    torch.set_num_threads(1)
    return char_lm(seed=5, chat=True, max_positions=256)


def memory_files(lm, root: Path) -> dict[str, Path]:
    """Memory files of several widths for ``lm`` (a, b, c), one of another model, and a truncated one."""
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, width, seed in [("a", 4, 11), ("b", 8, 12), ("c", 2, 13)]:
        out[name] = root / f"{name}.locas"
        save_memory(random_memory(lm, width=width, seed=seed, scale=2.0), out[name], model=lm)
    other = char_lm(seed=9, layers=3)
    out["other"] = root / "other.locas"
    save_memory(random_memory(other, width=4), out["other"], model=other)
    out["corrupt"] = root / "corrupt.locas"
    out["corrupt"].write_bytes(out["a"].read_bytes()[:-40])
    return out


def upload(client: httpx.Client, path, memory_id: str, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.post("/v1/memories", files={"file": (path.name, path.read_bytes())}, data={"id": memory_id},
                       headers=headers)


@contextmanager
def open_server(lm, files: dict[str, Path], memory_dir: Path):
    """An open server (no keys) with memories a, b, c uploaded; yields (url, Server)."""
    srv = Server(lm, memory_dir, max_batch=8, max_wait_ms=150, load_job_model=lambda: copy.deepcopy(lm),
                 limits=Limits(max_body_bytes=64 << 10))
    with serving(srv) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            for name in "abc":
                assert upload(client, files[name], name).status_code == 201
        yield url, srv


FUZZ_CONFIG = Path(__file__).with_name("schemathesis.toml")  # all checks; the few exceptions and why


def run_schemathesis(url: str, workdir: Path, *, max_examples: int, scenarios: int,
                     timeout_s: float = 3600) -> dict:
    """Fuzz the server at ``url`` with Schemathesis's own command line (`st run`, this Python's install): every check,
    every phase (``max_examples`` per operation in each; ``scenarios`` chains of linked requests in the stateful one),
    deterministic generation (the same requests every run), one worker; nothing but ``url`` is contacted. Its files
    stay in ``workdir``. Returns Schemathesis's JSON report, plus ``requests`` (every request it sent, from its HAR log:
    ``method``, ``path`` (the operation's path template), ``status``), ``memories`` (``memory_lifecycles``),
    ``output`` (the end of what it printed) and ``wall_s``."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "schemathesis.toml"  # the project's settings, and the number of stateful scenarios
    config.write_text(f"{FUZZ_CONFIG.read_text()}\n[phases.stateful]\ngeneration.max-examples = {scenarios}\n")
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", f"{url}/openapi.json",
           "--checks", "all", "--max-examples", str(max_examples), "--generation-deterministic",
           "--workers", "1", "--no-color", "--report", "json,har", "--report-json-path", str(workdir / "report.json"),
           "--report-har-path", str(workdir / "requests.har")]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout_s,
                          env={**os.environ, "NO_COLOR": "1"})
    wall = time.perf_counter() - t0
    if not (workdir / "report.json").exists():
        raise RuntimeError(f"schemathesis wrote no report (exit {done.returncode}):\n{done.stdout[-3000:]}"
                           f"{done.stderr[-3000:]}")
    report = json.loads((workdir / "report.json").read_text())
    templates = [(method.upper(), path, re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"))
                 for path, methods in httpx.get(f"{url}/openapi.json", timeout=60).json()["paths"].items()
                 for method in methods]
    entries = json.loads((workdir / "requests.har").read_text())["log"]["entries"]
    requests = []
    for entry in entries:
        method, path = entry["request"]["method"], urlsplit(entry["request"]["url"]).path
        route = next((p for m, p, rx in templates if rx.match(path) and m == method), None) or next(
            (p for _, p, rx in templates if rx.match(path)), path)
        requests.append({"method": method, "path": route, "status": entry["response"]["status"]})
    shown = ["st", *cmd[3:]]  # as typed: `st --config-file ... run ...`
    return {**report, "argv": shown, "requests": requests, "memories": memory_lifecycles(entries),
            "output": (done.stdout + done.stderr)[-6000:], "wall_s": wall}


def memory_lifecycles(entries: list[dict]) -> dict:
    """From a HAR log: the memory ids the run asked for (``made``: an upload's 201, a job's 202, whose memory exists
    once the job has succeeded), how many of them were then used (a 200 completion or chat naming one as ``model``
    or ``memory``, or its description or file read), and how many were made, used and then deleted (DELETE 200),
    in that order."""
    def body(text):
        try:
            return json.loads(text or "null")
        except ValueError:
            return None

    made, used, chains = {}, set(), set()
    for entry in entries:
        method, status = entry["request"]["method"], entry["response"]["status"]
        path = unquote(urlsplit(entry["request"]["url"]).path)
        answer = body(entry["response"].get("content", {}).get("text"))
        if method == "POST" and path == "/v1/memories" and status in (201, 202) and isinstance(answer, dict):
            made.setdefault(answer["id"] if status == 201 else answer["memory"], True)
        elif status != 200:
            continue
        elif method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
            asked = body(entry["request"].get("postData", {}).get("text")) or {}
            memory = asked.get("memory")
            for name in [asked.get("model"), *([memory] if isinstance(memory, str) else memory or [])]:
                if name in made:
                    used.add(name)
        elif path.startswith("/v1/memories/"):
            name = path.split("/")[3]
            if method == "GET" and name in made:
                used.add(name)
            elif method == "DELETE" and name in used:
                chains.add(name)
    return {"made": len(made), "used": len(used), "made_used_deleted": len(chains)}
