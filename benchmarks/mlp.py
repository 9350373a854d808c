"""Locas-MLP on a small GPT-2 trained here: truncation vs Locas-MLP (bp) vs Locas-MLP (NL-SVD) vs random init.

No pretrained two-layer-FFN model is available offline, so this script first trains a small
GPT-2-style model from scratch on three PG-19 books (10321, 10356, 10762) for a fixed wall-clock
budget and caches it under ``~/.cache/locas/`` (not in the repository). Tokenisation is
byte-level (``ByT5Tokenizer``: one token per UTF-8 byte, saved with the model, so the checkpoint
also works with ``locas pg19 --model <dir> --variant mlp``); perplexities are per byte.

It then runs the PG-19 protocol (score each window, then learn from it) on a prefix of the
held-out book 10146, side by side in one process:

  truncate          the frozen model with the window's context only
  mlp-bp            Locas-MLP r=64, step-wise write of window 1's highest-loss tokens, then AdamW
  mlp-bp-random     Locas-MLP r=64, Gaussian keys / zero values (the GLU-style random init), AdamW
  mlp-nlsvd         step-wise writes of each window's 64 highest-loss tokens, NL-SVD 128 -> 64
  mlp-nlsvd-clip    the same with weight-norm clipping after each write/compression (PAPER.md 4)

Every Locas row gets the same four-point sweep (lr for bp, eps for NL-SVD) on a tuning slice
taken from later in the same book (bytes 150K+), and the best setting runs on the evaluation prefix.

    python benchmarks/mlp.py --quick         # ~3 min: 1 min of pretraining, 8K-byte prefix
    python benchmarks/mlp.py                 # ~20 min: 8 min of pretraining, 64K-byte prefix

Prints a table with ratios to truncation and the cost of NL-SVD vs bp, and writes
benchmarks/results/mlp[-quick].json (+ .png).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from locas import LocasForCausalLM
from locas.core.files import atomic_write
from locas.data.pg19 import load_book
from locas.eval.pg19 import run_method
from locas.eval.report import format_table, line_plot, write_json
from locas.learn.config import TrainConfig
from locas.learn.mlp_learner import LocasMLPLearner
from locas.text.tokens import tokenize_text

RESULTS = Path(__file__).parent / "results"
CACHE = Path("~/.cache/locas").expanduser()
TRAIN_BOOKS = ("10321", "10356", "10762")
BP_LRS = (3e-3, 1e-2, 3e-2, 1e-1)  # four-point sweeps for every Locas row (same tuning effort)
NLSVD_EPS = (0.3, 1.0, 3.0, 10.0)
KINDS = ("bp", "bp-random", "nlsvd", "nlsvd-clip")
TUNE_OFFSET = 150_000  # bytes into the evaluation book where the tuning slice starts


# ---- pretraining --------------------------------------------------------------------------------
def model_config(size: str):
    from transformers import GPT2Config

    dims = {"small": (128, 4, 4), "tiny": (64, 2, 2)}[size]  # (hidden, layers, heads); sized for 2 CPU cores
    d, layers, heads = dims
    return GPT2Config(vocab_size=384, n_embd=d, n_layer=layers, n_head=heads, n_inner=4 * d, n_positions=1024,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=1,
                      pad_token_id=0)


def pretrain(out: Path, minutes: float, size: str, seq: int = 1024, batch: int = 2, lr: float = 2e-3,
             seed: int = 0) -> dict:
    """Train a byte-level GPT-2 on the three training books for ``minutes`` of wall clock; save to ``out``."""
    from transformers import ByT5Tokenizer, GPT2LMHeadModel

    torch.manual_seed(seed)
    tok = ByT5Tokenizer()
    train, valid = [], []
    for book in TRAIN_BOOKS:
        ids = tokenize_text(tok, load_book(book))
        cut = int(len(ids) * 0.98)  # last 2 % of each book held out for a validation loss
        train.append(ids[:cut])
        valid.append(ids[cut:])
    data = torch.cat(train)
    model = GPT2LMHeadModel(model_config(size)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    budget, warmup = minutes * 60, 30
    gen = torch.Generator().manual_seed(seed)
    t0, step, seen, losses = time.perf_counter(), 0, 0, []
    bar = tqdm(total=int(budget), desc="pretrain", unit="s", dynamic_ncols=True)
    while (elapsed := time.perf_counter() - t0) < budget:
        frac = elapsed / budget
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
        x = torch.stack([data[s:s + seq] for s in starts])  # (batch, seq)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step, seen = step + 1, seen + x.numel()
        losses.append(loss.item())
        bar.update(int(time.perf_counter() - t0) - bar.n)
        bar.set_postfix(step=step, loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    bar.close()
    model.eval()
    with torch.no_grad():
        v = torch.cat(valid)
        chunks = [v[i:i + seq] for i in range(0, len(v) - 1, seq)]
        nll = sum(model(input_ids=c[None], labels=c[None]).loss.item() * (len(c) - 1) for c in chunks)
        val_loss = nll / sum(len(c) - 1 for c in chunks)
    record = {"size": size, "params": sum(p.numel() for p in model.parameters()), "config": model.config.to_dict(),
              "train_books": TRAIN_BOOKS, "train_bytes": len(data), "steps": step, "tokens_seen": seen,
              "epochs": seen / len(data), "minutes": (time.perf_counter() - t0) / 60, "lr": lr, "batch": batch,
              "seq": seq, "final_train_loss": sum(losses[-50:]) / len(losses[-50:]), "val_loss": val_loss,
              "val_bits_per_byte": val_loss / math.log(2), "tokenizer": "ByT5Tokenizer (bytes + 3)"}
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    atomic_write(out / "pretrain.json", lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1)))
    print(f"pretrained {record['params'] / 1e6:.2f}M params, {step} steps, {seen:,} bytes seen "
          f"({record['epochs']:.2f} epochs): train loss {record['final_train_loss']:.3f}, "
          f"held-out {val_loss:.3f} nats/byte ({record['val_bits_per_byte']:.2f} bits/byte)", flush=True)
    return record


# ---- the PG-19 protocol ----------------------------------------------------------------------------
def run(lm, tokens, label, cfg, rows, curves, learner=None, method="truncate", progress=True):
    res = run_method(lm, method, tokens, cfg, label=label, learner=learner, progress=progress)
    row = {"ppl": res.ppl, "bits_per_byte": math.log2(res.ppl), "wall_s": res.wall_s,
           "extra_params": res.extra_params, "tokens": res.tokens, "config": cfg.to_dict()}
    if learner is not None:
        row.update(update=learner.update, init=learner.init, eps=learner.eps, capacity=learner.capacity,
                   write_count=learner.write_count, compressions=learner.compressions, skipped=learner.skipped,
                   timings=dict(learner.timings))
    rows[label] = row
    curves[label] = res.curve()
    print(f"  {label}: ppl {res.ppl:.4f}  {res.wall_s:.1f} s", flush=True)
    return row


def mlp_learner(lm, cfg, kind, eps=30.0):
    if kind == "bp":
        return LocasMLPLearner(lm, cfg, update="bp", init="write", eps=1.0)
    if kind == "bp-random":
        return LocasMLPLearner(lm, cfg, update="bp", init="random")
    return LocasMLPLearner(lm, cfg, update="nlsvd", eps=eps, write_tokens="top", write_count=64, capacity=128,
                           clip=kind == "nlsvd-clip")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 min pretraining (2-layer model), 8K-byte prefix")
    ap.add_argument("--pretrain-minutes", type=float, default=None, help="default 8 (quick: 1)")
    ap.add_argument("--retrain", action="store_true", help="ignore a cached pretrained model")
    ap.add_argument("--pretrain-only", action="store_true", help="stop after pretraining (and caching) the model")
    ap.add_argument("--max-tokens", type=int, default=None, help="evaluation prefix in bytes (default 65536)")
    ap.add_argument("--tune-tokens", type=int, default=None, help="tuning slice in bytes (default 8192)")
    ap.add_argument("--window-size", type=int, default=1024)
    ap.add_argument("--book", default="10146")
    ap.add_argument("--tag", default="", help="suffix for the result files")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on the shared 2-core box)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    size = "tiny" if args.quick else "small"
    minutes = args.pretrain_minutes or (1.0 if args.quick else 8.0)
    n_eval = args.max_tokens or (8192 if args.quick else 65536)
    n_tune = args.tune_tokens or (4096 if args.quick else 8192)
    W = args.window_size

    model_dir = CACHE / f"gpt2-pg19-bytes-{size}"
    if args.retrain or not (model_dir / "pretrain.json").is_file():
        pre = pretrain(model_dir, minutes, size)
    else:
        pre = json.loads((model_dir / "pretrain.json").read_text())
        print(f"using cached {model_dir} ({pre['minutes']:.1f} min, held-out {pre['val_loss']:.3f} nats/byte)")
    if args.pretrain_only:
        return
    lm = LocasForCausalLM.from_pretrained(str(model_dir))  # ReLU memory (the paper's)
    text = load_book(args.book)
    tokens = tokenize_text(lm.tokenizer, text, n_eval)
    tune = tokenize_text(lm.tokenizer, text[TUNE_OFFSET:], n_tune)
    base_params = lm.num_base_parameters()
    record = {"model_dir": str(model_dir), "pretrain": pre, "book": args.book, "window": W, "eval_bytes": len(tokens),
              "tune_bytes": len(tune), "tune_offset": TUNE_OFFSET, "threads": torch.get_num_threads()}

    # 1. same-effort sweep on the tuning slice
    print(f"\n### sweep on {len(tune):,} bytes of book {args.book} from byte {TUNE_OFFSET:,}", flush=True)
    sweep, sweep_curves = {}, {}
    run(lm, tune, "truncate", TrainConfig(window_size=W), sweep, sweep_curves, progress=False)
    best = {}
    for kind in KINDS:
        for val in (NLSVD_EPS if kind.startswith("nlsvd") else BP_LRS):
            cfg = TrainConfig(window_size=W, lr=val if kind.startswith("bp") else 1e-2, memory_width=64)
            label = f"mlp-{kind}-{'lr' if kind.startswith('bp') else 'eps'}{val:g}"
            row = run(lm, tune, label, cfg, sweep, sweep_curves, progress=False,
                      learner=mlp_learner(lm, cfg, kind, eps=val))
            row.update(kind=kind, value=val)
        cands = [v for v in sweep.values() if v.get("kind") == kind]
        best[kind] = min(cands, key=lambda v: v["ppl"])["value"]
    print("best:", best)

    # 2. evaluation prefix with the best settings
    print(f"\n### evaluation: first {len(tokens):,} bytes of book {args.book}, window {W}", flush=True)
    rows, curves = {}, {}
    run(lm, tokens, "truncate", TrainConfig(window_size=W), rows, curves)
    for kind in KINDS:
        cfg = TrainConfig(window_size=W, lr=best[kind] if kind.startswith("bp") else 1e-2, memory_width=64)
        run(lm, tokens, f"mlp-{kind}", cfg, rows, curves, learner=mlp_learner(lm, cfg, kind, eps=best[kind]))

    ref = rows["truncate"]
    table = []
    for label, r in rows.items():
        r.update(ppl_ratio=r["ppl"] / ref["ppl"], rel_time=r["wall_s"] / ref["wall_s"],
                 extra_params_pct=100 * r["extra_params"] / base_params)
        table.append([label, r["ppl"], r["bits_per_byte"], r["ppl_ratio"], r["extra_params"],
                      f"{r['extra_params_pct']:.2f}%", r["wall_s"], r["rel_time"]])
    text_table = format_table(["run", "ppl/byte", "bits/byte", "ppl/trunc", "extra params", "% base", "wall s",
                               "time/trunc"], table)
    nl, bp = rows["mlp-nlsvd"], rows["mlp-bp"]
    windows = len(curves["mlp-nlsvd"][0])
    cost = {"nlsvd_over_bp_time": nl["wall_s"] / bp["wall_s"],
            "nlsvd_compress_s_per_call": nl["timings"]["nlsvd_s"] / max(nl["compressions"], 1),
            "nlsvd_write_s_per_window": nl["timings"]["write_s"] / windows,
            "bp_update_s_per_window": bp["timings"]["bp_s"] / windows,
            "nlsvd_compressions": nl["compressions"]}
    print(f"\n== Locas-MLP on {pre['params'] / 1e6:.1f}M-param byte-level GPT-2, {len(tokens):,} bytes ==\n"
          f"{text_table}\nNL-SVD vs bp: {cost['nlsvd_over_bp_time']:.2f}x the wall time; one NL-SVD compression "
          f"{cost['nlsvd_compress_s_per_call']:.3f} s, write {cost['nlsvd_write_s_per_window']:.3f} s/window, "
          f"bp update {cost['bp_update_s_per_window']:.3f} s/window")
    RESULTS.mkdir(exist_ok=True)
    tag = ("mlp-quick" if args.quick else "mlp") + args.tag
    out = {**record, "best": best, "sweep": sweep, "rows": rows, "cost": cost, "table": text_table,
           "run_s": time.perf_counter() - t_all}
    write_json(RESULTS / f"{tag}.json", out)
    line_plot(RESULTS / f"{tag}.png", curves, "bytes read", "cumulative perplexity per byte",
              title=f"Locas-MLP, PG-19 {args.book} prefix, byte-level GPT-2")
    print(f"total {out['run_s'] / 60:.1f} min -> {RESULTS / (tag + '.json')}")


if __name__ == "__main__":
    main()
