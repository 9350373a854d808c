"""The playground's whole loop on the embedded model, as a user does it: `locas serve` started from the command
line, its page at "/" opened in headless Chromium, a held-out recall document pasted and memorised (the page's
defaults, objective ntp, with ``--passes`` passes so that the chart shows a curve), then its first questions
asked side by side (no memory, the memory, the text in the prompt). Records how long each part took, every
answer and whether it contains the reference, and a screenshot of the finished page for docs/SERVING.md.

    flock /tmp/locas-cpu.lock python benchmarks/playground.py              # about 2 min
    python benchmarks/playground.py --doc quill-and-lantern --questions 3

Writes benchmarks/results/playground.json and docs/playground.png. Needs Debian's chromium and chromium-driver
(tests/browser.py says how to install them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser import by_id, chrome, js_errors, set_value, wait_for  # noqa: E402
from locas.eval.report import format_table, write_json  # noqa: E402
from locas.text.metrics import answer_contained  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = {"answer-base": "no memory", "answer-memory": "memory", "answer-document": "text in the prompt"}


def start_server(memory_dir: Path, model: str, threads: int) -> tuple[subprocess.Popen, str]:
    """`locas serve` as a user starts it (port 0: a free one); its URL from the line it prints."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-m", "locas", "serve", "--memory-dir", str(memory_dir), "--port", "0",
                             "--model", model], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in proc.stdout:
        print(line, end="")
        found = re.search(r"on (http://[\d.]+:\d+)/v1", line)
        if found:
            return proc, found.group(1)
    raise SystemExit(f"locas serve stopped before it served (exit {proc.wait()})")


def ask(drv, question: str) -> dict:
    set_value(drv, "question", question)
    t0 = time.perf_counter()
    by_id(drv, "ask").click()
    wait_for("answer", lambda: all(by_id(drv, c).get_attribute("data-state") in ("done", "failed") for c in COLUMNS),
             timeout=300)
    out = {"s": round(time.perf_counter() - t0, 2)}
    for column, name in COLUMNS.items():
        box = by_id(drv, column)
        out[name] = box.find_element("class name", "text").text if box.get_attribute("data-state") == "done" \
            else f"(error: {box.find_element('class name', 'state').text})"
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--doc", default="marlow-expedition", help="a held-out document of benchmarks/data/recall")
    p.add_argument("--questions", type=int, default=6, help="how many of its questions to ask (default: 6)")
    p.add_argument("--passes", type=int, default=3, help="passes over the text (the page's select; default: 3)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/playground.json"))
    p.add_argument("--screenshot", default=str(ROOT / "docs/playground.png"))
    args = p.parse_args()

    doc = json.loads((ROOT / "benchmarks/data/recall" / f"{args.doc}.json").read_text())
    assert doc["split"] == "heldout", "show the playground on a held-out document, never a tuning one"
    questions = doc["questions"][:args.questions]
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(Path(tmp), args.model, args.threads)
        drv = chrome(size="1280,1250")
        try:
            t0 = time.perf_counter()
            drv.get(url + "/")
            wait_for("load", lambda: "context" in by_id(drv, "server-line").text)
            load_s = time.perf_counter() - t0
            set_value(drv, "doc", doc["text"])
            drv.find_element("css selector", f"#passes option[value='{args.passes}']").click()
            t0 = time.perf_counter()
            by_id(drv, "memorize").click()
            status = by_id(drv, "job-status")
            wait_for("memorise", lambda: status.get_attribute("data-state") in ("succeeded", "failed"), timeout=900)
            job_s = time.perf_counter() - t0
            if status.get_attribute("data-state") != "succeeded":
                raise SystemExit(f"the job failed: {by_id(drv, 'job-error').text}")
            job = httpx.get(f"{url}/v1/jobs").json()["data"][-1]
            job.pop("config")
            answers = []
            for q in questions:
                got = ask(drv, q["question"])
                refs = [q["answer"], *q.get("aliases", [])]
                got["question"], got["reference"] = q["question"], q["answer"]
                got["contains"] = {name: answer_contained(got[name], refs) for name in COLUMNS.values()}
                answers.append(got)
                print(f"{q['question']}  [{q['answer']}]  " + " | ".join(f"{n}: {got[n]!r}" for n in COLUMNS.values()))
            set_value(drv, "question", questions[0]["question"])  # the screenshot shows the first question
            ask(drv, questions[0]["question"])
            drv.execute_script("window.scrollTo(0, 0)")
            drv.save_screenshot(args.screenshot)
            errors = js_errors(drv)
        finally:
            drv.quit()
            proc.terminate()
            proc.wait(timeout=30)
    rows = [[name] + [sum(a["contains"][name] for a in answers)] + [len(answers)] for name in COLUMNS.values()]
    print(format_table(["column", "answers containing the reference", "questions"], rows))
    record = {"doc": args.doc, "model": args.model, "passes": args.passes, "page_load_s": round(load_s, 2),
              "job_s": round(job_s, 1),
              "job": job, "answers": answers, "ask_s_mean": round(sum(a["s"] for a in answers) / len(answers), 2),
              "contained": {r[0]: r[1] for r in rows}, "browser_errors": errors,
              "wall_s": round(time.perf_counter() - t_start, 1)}
    write_json(args.out, record)
    print(f"page {load_s:.1f} s, job {job_s:.1f} s, {record['ask_s_mean']} s a question (three answers); "
          f"wrote {args.out} and {args.screenshot}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
