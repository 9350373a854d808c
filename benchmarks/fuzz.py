"""Schemathesis against `locas serve`: the long run (tests/test_schema_fuzz.py is the short one in `make test`).

The server is the tests' (tests/serve_support.py: the tiny character-level chat model, memories a, b, c uploaded,
max batch 8, 64 KB JSON bodies), in this process on loopback; Schemathesis 4 runs as its own command line
(``st run``) with every check (``--checks all``, tests/schemathesis.toml: the one exception and why) and every
phase: examples, coverage, fuzzing (``--max-examples`` per operation) and stateful (``--scenarios`` chains
following the schema's links: make a memory, read it, use it in a completion, delete it). Generation is
deterministic: the same requests every run.

    flock /tmp/locas-cpu.lock python benchmarks/fuzz.py                       # ~3.5 min here: about 3,000 requests
    flock /tmp/locas-cpu.lock python benchmarks/fuzz.py --max-examples 20 --scenarios 50 --out /tmp/fuzz.json

Prints the requests sent, the failures by check, the statuses seen per operation and the memories the run made,
used and deleted; writes benchmarks/results/fuzz.json (target: 0 failures over at least 1,000 requests).
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from locas.eval.report import write_json  # noqa: E402
from serve_support import memory_files, open_server, run_schemathesis, served_lm  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-examples", type=int, default=100, help="test cases per operation in each phase")
    ap.add_argument("--scenarios", type=int, default=300, help="stateful scenarios (chains of linked requests)")
    ap.add_argument("--out", default=str(RESULTS / "fuzz.json"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    lm = served_lm()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with open_server(lm, memory_files(lm, tmp / "files"), tmp / "served") as (url, srv):
            run = run_schemathesis(url, tmp / "fuzz", max_examples=args.max_examples, scenarios=args.scenarios)
            alive = srv.batcher.thread.is_alive()
    requests = run.pop("requests")
    statuses = collections.Counter(r["status"] for r in requests)
    per_operation = collections.defaultdict(collections.Counter)
    for r in requests:
        per_operation[f"{r['method']} {r['path']}"][r["status"]] += 1
    failures = {f"{f['code']} {f['title']}": f["count"] for f in run["failures"]}
    links = re.search(r"API Links:\s+(\d+) covered / (\d+) selected", run["output"])
    command = " ".join(run["argv"]).replace(url, "http://127.0.0.1:PORT").replace(str(tmp), "TMP")
    report = {"max_examples": args.max_examples, "scenarios": args.scenarios,
              "schemathesis": run["schemathesis_version"], "command": command, "requests": len(requests),
              "test_cases": run["test_cases"],
              "links": {"covered": int(links[1]), "selected": int(links[2])} if links else None,
              "failures": failures, "errors": run["errors"], "exit_code": run["exit_code"], "phases": run["phases"],
              "statuses": {str(k): v for k, v in sorted(statuses.items())},
              "server_errors": sum(v for k, v in statuses.items() if k >= 500),
              "per_operation": {op: {str(k): v for k, v in sorted(c.items())}
                                for op, c in sorted(per_operation.items())},
              "memories": run["memories"], "server_alive": alive, "fuzz_s": round(run["wall_s"], 1),
              "wall_s": round(time.perf_counter() - t0, 1)}
    print(run["output"][-2500:])
    print(f"\n{len(requests)} requests ({run['test_cases']['generated']} test cases) in {run['wall_s']:.0f} s; "
          f"failures: {sum(failures.values())} {failures or ''}; errors: {run['errors'] or 0}; "
          f"5xx: {report['server_errors']}; server still serving: {alive}")
    print("statuses: " + ", ".join(f"{k}: {v}" for k, v in report["statuses"].items()))
    for op, counts in report["per_operation"].items():
        print(f"  {op:40s} " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    print(f"stateful links covered: {report['links']}; memories made {run['memories']['made']}, used "
          f"{run['memories']['used']}, made then used then deleted {run['memories']['made_used_deleted']}")
    write_json(args.out, report)
    print(f"wrote {args.out} ({report['wall_s'] / 60:.1f} min)")
    return 0 if not failures and not run["errors"] and run["exit_code"] == 0 and len(requests) >= 1000 else 1


if __name__ == "__main__":
    sys.exit(main())
