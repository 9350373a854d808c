"""Kill trials at scale: SIGKILL `locas memorize`, `locas fuse`, `locas pg19 --checkpoint-every 1` at random moments.

After every kill the output path must hold the previous valid artefact or a new valid one (a memory
file that loads and passes its checksum, a checkpoint transformers loads), and every interrupted
`pg19` run must finish with `--resume` on the per-window numbers of an uninterrupted run. Tiny
word-level model, one thread per process, trials cycle the three commands.

    python benchmarks/faults.py                 # 36 trials (12 per command), ~8 min here
    python benchmarks/faults.py --trials 90 --seed 1

Prints the counts and writes benchmarks/results/faults.json (target: 0 broken artefacts).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fault_trials import run_trials  # noqa: E402
from locas.eval.report import write_json  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=36)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "faults.json"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        report = run_trials(Path(tmp), trials=args.trials, seed=args.seed)
    report["wall_s"] = time.perf_counter() - t0
    per = {c: [r for r in report["rows"] if r["command"] == c] for c in ("memorize", "fuse", "pg19")}
    print(f"\n{report['trials']} trials, {report['killed']} killed before finishing, "
          f"{report['during_write']} killed during a write, {report['broken']} broken artefacts; "
          f"pg19 resumed bit-exactly in {report['resumed_exactly']} of {len(per['pg19'])}")
    for c, rows in per.items():
        print(f"  {c}: {len(rows)} trials, {sum(r['killed'] for r in rows)} killed, "
              f"{sum(r['during_write'] for r in rows)} during a write, {sum(not r['valid'] for r in rows)} broken")
    write_json(args.out, report)
    print(f"wrote {args.out} ({report['wall_s'] / 60:.1f} min)")
    return 1 if report["broken"] else 0


if __name__ == "__main__":
    sys.exit(main())
