"""Two real processes under torchrun (gloo on CPU) give the single-process results; failures are kept apart."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import tiny_model
from locas.distributed import DistContext, strip_flag


def _tiny_model_dir(path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={f"w{i}": i for i in range(97)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tiny_model("llama").save_pretrained(path)
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", pad_token="w0").save_pretrained(path)
    return path


def _docs(tmp_path, n=3):
    paths = []
    for k in range(n):
        p = tmp_path / f"doc{k}.txt"
        p.write_text(" ".join(f"w{3 + (i * (k + 2)) % 50}" for i in range(150)))
        paths.append(p)
    return paths


def _pg19(model_dir, docs, out, nproc=1, extra=()):
    args = ["pg19", "--model", str(model_dir), "--device", "cpu", "--out", str(out), "--window-size", "32",
            "--memory-width", "4", "--lr", "0.05", "--method", "truncate", "--method", "locas", *extra]
    for d in docs:
        args += ["--book", str(d)]
    if nproc == 1:
        cmd = [sys.executable, "-m", "locas.cli", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "locas.cli", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def _per_book(out):
    payload = json.loads((out / "results.json").read_text())
    return {m: [round(sum(r["window_nll"]), 4) for r in rs] for m, rs in payload["per_book"].items()}, payload


def test_shard_is_round_robin():
    ctx = DistContext(rank=1, world=2)
    assert ctx.shard(list(range(7))) == [1, 3, 5]
    assert strip_flag(["pg19", "--num-gpus", "4", "--book", "x"], "--num-gpus") == ["pg19", "--book", "x"]


@pytest.mark.slow
def test_two_processes_match_one_and_failures_resume(tmp_path):
    model_dir = _tiny_model_dir(tmp_path / "model")
    docs = _docs(tmp_path)
    one = _pg19(model_dir, docs, tmp_path / "one")
    assert one.returncode == 0, one.stderr[-2000:]
    two = _pg19(model_dir, docs, tmp_path / "two", nproc=2)
    assert two.returncode == 0, two.stderr[-2000:]
    a, pa = _per_book(tmp_path / "one")
    b, pb = _per_book(tmp_path / "two")
    assert a == b and len(a["locas"]) == 3
    assert f"{pa['methods']['locas']['ppl']:.4f}" == f"{pb['methods']['locas']['ppl']:.4f}"

    # one document fails while it runs (one token: nothing to score; a bad file would be refused before any
    # work): the others finish and are kept, the error names the document
    bad = tmp_path / "doc1.txt"
    good_text = bad.read_text()
    bad.write_text("w5")
    failed = _pg19(model_dir, docs, tmp_path / "three", nproc=2)
    assert failed.returncode != 0
    assert "doc1.txt / truncate failed on rank" in failed.stderr and "too short" in failed.stderr
    parts = sorted(p.name for p in (tmp_path / "three" / "parts").glob("*.json"))
    assert parts == ["doc0__locas.json", "doc0__truncate.json", "doc2__locas.json", "doc2__truncate.json"]
    mtimes = {p: (tmp_path / "three" / "parts" / p).stat().st_mtime_ns for p in parts}
    bad.write_text(good_text)
    resumed = _pg19(model_dir, docs, tmp_path / "three", nproc=2, extra=["--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "kept 4 finished unit(s)" in resumed.stdout
    assert all((tmp_path / "three" / "parts" / p).stat().st_mtime_ns == t for p, t in mtimes.items())
    c, _ = _per_book(tmp_path / "three")
    assert c == a
