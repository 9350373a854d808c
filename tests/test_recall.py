"""Memories that answer: fact probes, hard-label examples, the padded probe batch, never-blank answers,
the prompt format a memory records for `locas ask`, and the recall benchmark's documents."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pytest
import torch

from locas import cli
from locas.core.files import read_memory_info
from locas.errors import LocasError
from locas.learn.objectives.selfstudy import StudentBatch, label_loss, student_batch
from locas.probes.config import ProbeConfig
from locas.probes.families import fact_probes, fact_spans, fact_wordings, make_probes
from locas.probes.teacher import label_examples
from locas.text.decoding import Decoder, blank_token_ids
from locas.text.metrics import answer_contained
from locas.text.prompts import DOCUMENT_INSTRUCTION, answer_stop_id
from locas.text.sentences import sentences, split_chunks
from test_selfstudy import DOC, _one_thread, _word_lm, word_model_files  # noqa: F401 (autouse fixture)

RECALL_DATA = Path(__file__).resolve().parent.parent / "benchmarks" / "data" / "recall"


def test_fact_probes_hide_every_name_and_number_of_every_sentence_in_each_wording():
    chunk = "In 1871 Odile Marchetti founded the glassworks in Harrow with forty workers."
    probes = fact_probes(chunk, 0, random.Random(0))
    spans = fact_spans(chunk)
    assert {chunk[a:b] for a, b, _ in spans} == {"1871", "Odile Marchetti", "Harrow", "forty"}
    by_answer: dict[str, list[str]] = {}
    for p in probes:
        by_answer.setdefault(p.reference, []).append(p.prompt)
    assert set(by_answer) == {"1871", "Odile Marchetti", "Harrow", "forty"}  # each fact, both directions
    for answer, prompts in by_answer.items():
        assert 2 <= len(prompts) <= 3 and len(set(prompts)) == len(prompts)
        assert all(answer not in q for q in prompts)  # the answer is hidden in every wording
    assert "In what year Odile Marchetti founded" in " ".join(by_answer["1871"])
    assert any(q.endswith("with how many workers?") for q in by_answer["forty"])
    assert any(q.startswith("Fill in the blank") and "____" in q for q in by_answer["Harrow"])
    assert len(fact_probes(chunk, 0, random.Random(0), wordings=1)) == 4
    complete = fact_wordings("The mill opened in 1871.", 19, 23, "number", 3)[2]
    assert complete == 'Complete the sentence: "The mill opened in ..."'
    # the default families are fact probes; no cap: every sentence with a fact is covered, deterministically
    lm = _word_lm()
    chunks = split_chunks(lm.tokenizer, DOC, chunk_tokens=40)
    a = make_probes(lm, chunks, ProbeConfig(chunk_tokens=40), progress=False)
    assert a == make_probes(lm, chunks, ProbeConfig(chunk_tokens=40), progress=False)
    assert {p.family for p in a} == {"fact"}
    with_facts = [s for c in chunks for s in sentences(c) if fact_spans(s)]
    assert all(any(p.reference in s for p in a) for s in with_facts)


def test_label_examples_target_the_reference_and_its_stop_in_the_ask_prompt():
    lm = _word_lm()
    chunks = split_chunks(lm.tokenizer, DOC, chunk_tokens=40)
    cfg = ProbeConfig(chunk_tokens=40)
    examples = label_examples(lm, chunks, make_probes(lm, chunks, cfg, progress=False), cfg)
    assert examples
    stop = answer_stop_id(lm.tokenizer, "plain")
    tok = lm.tokenizer
    for e in examples[:10]:
        assert e.answer == e.reference_ids + [stop]
        assert tok.decode(e.reference_ids).replace(" ", "") == e.reference.replace(" ", "")
        assert e.teacher_nll is None and e.topk_logits.numel() == 0
        # the student sees the instruction but not the chunk; the teacher context holds the chunk
        assert DOCUMENT_INSTRUCTION.split()[0] in tok.decode(e.student_prefix)
        assert len(e.context) > len(e.student_prefix)


def test_left_padded_probe_batch_scores_each_answer_as_if_alone():
    lm = _word_lm(seed=3)
    chunks = split_chunks(lm.tokenizer, DOC, chunk_tokens=40)
    cfg = ProbeConfig(chunk_tokens=40)
    examples = label_examples(lm, chunks, make_probes(lm, chunks, cfg, progress=False), cfg)[:5]
    assert len({len(e.prompt) for e in examples}) > 1  # rows of different lengths: padding matters
    batch = student_batch(examples, 0, "cpu", pad_id=0)
    assert isinstance(batch, StudentBatch) and batch.keep == max(len(e.answer) for e in examples) + 1
    with torch.no_grad():
        kept = lm.model(input_ids=batch.ids, use_cache=False, **batch.inputs()).logits
        assert kept.shape[1] == batch.keep  # logits only where answers are predicted
        padded = batch.answer_logits(kept)
        alone = []
        for e in examples:
            ids = torch.tensor([e.student_prefix + e.prompt + e.answer])
            logits = lm.model(input_ids=ids, use_cache=False).logits[0]
            alone.append(logits[-len(e.answer) - 1:-1])
    assert torch.allclose(padded, torch.cat(alone), atol=1e-4)
    loss = label_loss(padded, examples)
    target = torch.tensor([t for e in examples for t in e.answer])
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(torch.cat(alone), target), atol=1e-4)


class _SpaceThenNewline(torch.nn.Module):
    """Wraps a model: its first generated token is a space, every later one a line break (the reported
    SmolLM2 failure: " " then "\\n", so a stop at the newline gave a blank answer)."""

    def __init__(self, model, space: int, newline: int):
        super().__init__()
        self.inner, self.space, self.newline, self.calls = model, space, newline, 0
        self.config = model.config

    def forward(self, **kw):
        out = self.inner(**kw)
        bias = torch.zeros(out.logits.shape[-1])
        bias[self.space if self.calls == 0 else self.newline] = 100.0
        self.calls += 1
        out.logits = out.logits + bias
        return out


def test_answers_are_never_blank_while_the_limit_allows():
    from test_locomo_support import char_lm

    lm = char_lm(seed=0)
    tok = lm.tokenizer
    space, newline = tok.convert_tokens_to_ids(" "), tok.convert_tokens_to_ids("\n")
    assert {space, newline} <= blank_token_ids(tok)
    prefix, question = tok.encode("Q: who?"), tok.encode(" A:")
    wrapped = _SpaceThenNewline(lm.model, space, newline)
    blank = Decoder(wrapped, tok, prefix, max_new_tokens=6, batch_size=1).answer([question])[0]
    assert blank == ""  # without the guard: a space, then the newline stops it
    wrapped.calls = 0
    answer = Decoder(wrapped, tok, prefix, max_new_tokens=6, batch_size=1).answer([question], min_new_tokens=1)[0]
    assert answer.strip(), "the stop tokens must wait for a non-blank token"
    from locas.cli.commands.ask import say_answer

    assert say_answer("Tom", 4) == "Tom"
    with pytest.raises(LocasError, match="no answer within 4 tokens"):
        say_answer("  ", 4)


def test_memorize_defaults_to_recall_and_ask_uses_the_recorded_prompt(tmp_path, capsys):
    from locas.cli.commands.ask import build_prompt, trained_prompt

    lm, model_dir, text, out = word_model_files(tmp_path)
    assert cli.main(["memorize", str(text), "-o", str(out), "--model", str(model_dir), "--device", "cpu",
                     "--memory-width", "4", "--chunk-tokens", "40", "--window-size", "32"]) == 0
    printed = capsys.readouterr().out
    assert "selfstudy:" in printed and "without memory" in printed
    info = read_memory_info(out)
    assert info["objective"] == "selfstudy" and info["probe_loss"] == "label" and info["families"] == "fact"
    assert info["probes"] > 10 and info["steps"] >= 1
    assert info["prompt"] == {"style": "plain", "instruction": DOCUMENT_INSTRUCTION}
    assert trained_prompt(out) == info["prompt"] and trained_prompt(None) == {}
    args = argparse.Namespace(context=None, memory=str(out), prompt_style="auto")
    prompt = build_prompt(lm, args, reserve=64)
    expected = lm.tokenizer.encode(DOCUMENT_INSTRUCTION, add_special_tokens=False)  # the word tokenizer's view
    assert prompt.style == "plain" and prompt.prefix_ids[:len(expected)] == expected
    args.prompt_style = "plain"  # an explicit style keeps the memory's instruction
    assert build_prompt(lm, args, reserve=64).prefix_ids[:len(expected)] == expected
    args.memory = None  # no memory: the old instruction of `locas ask`
    assert build_prompt(lm, args, reserve=64).prefix_ids[:len(expected)] != expected
    # a text without a name or a number: a one-line error that names the fix
    empty = tmp_path / "plain.txt"
    empty.write_text("the press arrived by steamboat in the spring and the race was won by a few minutes.")
    code = cli.main(["memorize", str(empty), "-o", str(tmp_path / "p.locas"), "--model", str(model_dir), "--device",
                     "cpu", "--memory-width", "4"])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the probe-making progress bar
    assert code == 2 and last.startswith("error: ") and "--objective ntp" in last and "Traceback" not in err


def test_answer_contained_matches_whole_words_after_normalisation():
    assert answer_contained("It was built in 1,871 by Ada.", ["1871"])
    assert answer_contained("the Beetles", ["Beetles"])
    assert not answer_contained("Harrowgate", ["Harrow"])
    assert not answer_contained("", ["Harrow"]) and not answer_contained("Harrow", [""])


def test_recall_benchmark_documents_follow_their_rules():
    docs = [json.loads(f.read_text()) for f in sorted(RECALL_DATA.glob("*.json"))]
    splits = [d["split"] for d in docs]
    assert len(docs) >= 6 and splits.count("tune") >= 3 and splits.count("heldout") >= 3
    assert len({d["id"] for d in docs}) == len(docs)
    for d in docs:
        words = len(d["text"].split())
        assert 300 <= words <= 1100, (d["id"], words)  # about 400-1,500 tokens
        qs = d["questions"]
        assert len(qs) >= 25, d["id"]
        types = [q["type"] for q in qs]
        assert all(types.count(t) >= 4 for t in ("who", "what", "when", "where", "how_many", "two_hop")), d["id"]
        for q in qs:
            assert q["answer"] in d["text"] and all(a in d["text"] for a in q.get("aliases", [])), q
            assert len(q["answer"].split()) <= 5 and q["question"].endswith("?")
            assert q["question"] not in d["text"]  # asked in other words than the text's
