"""Schemathesis against `locas serve` on the tiny chat model (started as tests/test_serve.py starts it): every
check, every phase, the stateful links that make a memory, use it and delete it; a bounded run (a few hundred
requests, deterministic generation: the same requests every run). tests/schemathesis.toml has the one exception to
the checks and why; the long run is benchmarks/fuzz.py; docs/SERVING.md has both.
"""

from __future__ import annotations

import collections
import importlib.util

import pytest

from serve_support import memory_files, open_server, run_schemathesis, served_lm

pytestmark = pytest.mark.skipif(importlib.util.find_spec("schemathesis") is None,
                                reason="schemathesis is not installed (the dev extra: pip install -e '.[dev]')")

MAX_EXAMPLES = 3  # per operation in each phase (the coverage phase's boundary cases are most of the requests)
SCENARIOS = 30  # stateful chains of linked requests
MIN_REQUESTS = 500  # 679 are sent, in about 36 s here


def test_schemathesis_finds_nothing(tmp_path):
    lm = served_lm()
    with open_server(lm, memory_files(lm, tmp_path / "files"), tmp_path / "served") as (url, srv):
        run = run_schemathesis(url, tmp_path / "fuzz", max_examples=MAX_EXAMPLES, scenarios=SCENARIOS)
        serving = srv.batcher.thread.is_alive()
    requests = run["requests"]
    statuses = collections.Counter(r["status"] for r in requests)
    summary = f"{len(requests)} requests, statuses {dict(statuses)}, {run['memories']}; output:\n{run['output']}"
    assert run["complete"] and run["exit_code"] == 0 and serving, summary
    assert run["failures"] == [] and run["errors"] == [], summary
    assert len(requests) >= MIN_REQUESTS and run["test_cases"]["generated"] >= MIN_REQUESTS, summary  # it did send
    assert not [r for r in requests if r["status"] >= 500], summary
    assert {name for name, phase in run["phases"].items() if phase["status"] == "success"} >= {
        "coverage", "fuzzing", "stateful"}, run["phases"]
    # the stateful phase followed the links: jobs made memories and were followed by the ids their answers gave;
    # the served model and memories were used by completions and chats; memories were deleted
    ok = collections.Counter((r["method"], r["path"]) for r in requests if r["status"] < 300)
    assert run["memories"]["made"] >= 1 and ok["GET", "/v1/jobs/{job_id}"] >= 1, summary
    assert ok["POST", "/v1/completions"] >= 1 and ok["POST", "/v1/chat/completions"] >= 1, summary
    assert ok["DELETE", "/v1/memories/{memory_id}"] >= 1, summary
