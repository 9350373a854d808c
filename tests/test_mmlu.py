"""MMLU evaluator: batched letter-NLL scoring, aggregation, data loading, CLI errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import transformers

from conftest import VOCAB, tiny_lm
from locas.data.mmlu import LETTERS, Question, load_questions, read_csv, stratified_subjects
from locas.errors import LocasError
from locas.eval.mmlu import aggregate, compare, evaluate_mmlu, format_question, letter_tokens, prefix_text


def char_tokenizer():
    """A character-level tokenizer with the tiny models' 97-token vocabulary (built in memory, no network)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "\n": 4}
    for c in range(32, 124):
        vocab[chr(c)] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


QUESTIONS = [  # different lengths so batches need padding
    ("What is two plus two?", ("3", "4", "5", "22")),
    ("Pick a colour", ("red", "green", "blue", "black")),
    ("Which planet is closest to the sun in our solar system?", ("Venus", "Mercury", "Mars", "Earth")),
    ("x", ("a", "b", "c", "d")),
    ("Capital of France, the country in western Europe?", ("Rome", "Paris", "Berlin", "Madrid")),
]


def write_mmlu(root, subject, rows, split):
    (root / split).mkdir(parents=True, exist_ok=True)
    with open(root / split / f"{subject}_{split}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", "choice0", "choice1", "choice2", "choice3", "answer"])
        for q, ch, a in rows:
            w.writerow([q, *ch, a])


@torch.no_grad()
def reference_logp(model, tok, q: Question, shots: list[Question]) -> torch.Tensor:
    """Unbatched, uncached: the whole prompt in one forward; log-probs of the 4 letters (4,)."""
    shared, letters = letter_tokens(tok)
    ids = tok(prefix_text(q.subject, shots))["input_ids"] + tok(format_question(q), add_special_tokens=False)[
        "input_ids"] + shared
    logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    return torch.log_softmax(logits, -1)[letters]


@pytest.fixture
def setup(tmp_path):
    lm, tok = tiny_lm("llama"), char_tokenizer()
    lm.model.config.max_position_embeddings = 1024  # rotary positions: a 5-shot character-level prompt fits
    dev = [(f"dev question {i}?", ("one", "two", "three", "four"), i % 4) for i in range(5)]
    write_mmlu(tmp_path, "toy", dev, "dev")
    shots = read_csv(tmp_path / "dev" / "toy_dev.csv", "toy")
    # answers forced by construction: the letter the model prefers when it sees the question alone
    forced = [int(reference_logp(lm.model, tok, Question("toy", q, ch, 0), shots).argmax()) for q, ch in QUESTIONS]
    write_mmlu(tmp_path, "toy", [(q, ch, a) for (q, ch), a in zip(QUESTIONS, forced)], "test")
    return lm, tok, tmp_path, shots, forced


def test_letter_nll_picks_forced_answer_batched(setup):
    lm, tok, root, shots, forced = setup
    qs = load_questions(data=root)
    rep = evaluate_mmlu(lm.model, tok, qs, shots=5, data=root, batch_size=3, progress=False)
    assert rep["micro"] == 1.0 and rep["n"] == len(QUESTIONS)
    for r in rep["records"]:  # batched + cached + padded scoring equals the plain forward
        ref = reference_logp(lm.model, tok, qs[r["index"]], shots)
        assert torch.allclose(torch.tensor(r["logp"]), ref, atol=1e-4)
    # every answer rotated by one letter: nothing is right any more
    write_mmlu(root, "toy", [(q, ch, (a + 1) % 4) for (q, ch), a in zip(QUESTIONS, forced)], "test")
    assert evaluate_mmlu(lm.model, tok, shots=5, data=root, batch_size=2, progress=False)["micro"] == 0.0


def test_a_sliding_window_model_scores_as_the_plain_forward(setup):
    """Gemma/Mistral-style windowed layers, the window inside the padded part of a batch: still the plain forward."""
    from test_decoding import SLIDING

    _, tok, root, shots, _ = setup
    torch.manual_seed(0)
    config = SLIDING["mistral"](VOCAB)
    config.max_position_embeddings = 1024
    config.sliding_window = 128  # longer than some questions, shorter than the 5-shot prefix
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    qs = load_questions(data=root)
    rep = evaluate_mmlu(model, tok, qs, shots=5, data=root, batch_size=3, progress=False)
    for r in rep["records"]:
        assert torch.allclose(torch.tensor(r["logp"]), reference_logp(model, tok, qs[r["index"]], shots), atol=1e-4)


def test_zero_shot_and_letters_as_answers(setup):
    lm, tok, root, _, forced = setup
    write_mmlu(root, "toy", [(q, ch, LETTERS[a]) for (q, ch), a in zip(QUESTIONS, forced)], "test")
    qs = load_questions(data=root)
    assert [q.answer for q in qs] == forced
    rep = evaluate_mmlu(lm.model, tok, qs, shots=0, data=root, batch_size=4, progress=False)
    for r in rep["records"]:
        assert torch.allclose(torch.tensor(r["logp"]), reference_logp(lm.model, tok, qs[r["index"]], []), atol=1e-4)


def test_aggregation_matches_hand_count():
    recs = [  # subject, answer, pred
        ("s1", 0, 0), ("s1", 1, 2), ("s1", 3, 3), ("s1", 2, 2),  # 3/4
        ("s2", 0, 1), ("s2", 1, 1),  # 1/2
        ("s3", 2, 0), ("s3", 2, 1), ("s3", 2, 2),  # 1/3
    ]
    records = [{"subject": s, "index": i, "answer": a, "pred": p, "logp": [0.0] * 4}
               for i, (s, a, p) in enumerate(recs)]
    agg = aggregate(records, {"s1": "STEM", "s2": "STEM", "s3": "humanities"})
    assert agg["n"] == 9 and agg["correct"] == 5
    assert agg["micro"] == pytest.approx(5 / 9)
    assert agg["macro"] == pytest.approx((3 / 4 + 1 / 2 + 1 / 3) / 3)
    assert agg["categories"]["STEM"] == {"acc": pytest.approx(4 / 6), "correct": 4, "n": 6}
    assert agg["categories"]["humanities"]["correct"] == 1 and agg["categories"]["humanities"]["n"] == 3
    assert agg["subjects"]["s2"]["acc"] == 0.5


def test_compare_counts_flips_and_kl():
    base = [{"subject": "s", "index": i, "answer": 0, "pred": p, "logp": [-1.0, -2.0, -3.0, -4.0]}
            for i, p in enumerate([0, 1, 0])]
    same = compare(base, base)
    assert same == {"agreement": 1.0, "letter_kl": 0.0, "flips_to_correct": 0, "flips_to_wrong": 0}
    other = [dict(r, pred=q, logp=[-4.0, -3.0, -2.0, -1.0]) for r, q in zip(base, [1, 0, 0])]
    c = compare(other, base)
    assert c["agreement"] == pytest.approx(1 / 3) and c["flips_to_correct"] == 1 and c["flips_to_wrong"] == 1
    assert c["letter_kl"] > 0.5


def test_stratified_subset_is_seeded_and_equal_per_subject(tmp_path):
    rows = [(f"q{i}", ("a", "b", "c", "d"), i % 4) for i in range(20)]
    for s in ("alpha", "beta"):
        write_mmlu(tmp_path, s, rows, "test")
    a = load_questions(limit_per_subject=6, seed=3, data=tmp_path)
    assert a == load_questions(limit_per_subject=6, seed=3, data=tmp_path)
    assert [q.subject for q in a].count("alpha") == 6 and [q.subject for q in a].count("beta") == 6
    assert [q.index for q in a] != [q.index for q in load_questions(limit_per_subject=6, seed=4, data=tmp_path)]
    cats = {f"s{i}": {"category": "STEM" if i < 4 else "humanities"} for i in range(7)}
    (tmp_path / "subject_categories.json").write_text(json.dumps(cats))
    picked = stratified_subjects(2, seed=0, data=tmp_path)
    assert len(picked) == 4 and sum(int(s[1:]) < 4 for s in picked) == 2 and picked == sorted(picked)


def test_bad_input_errors(tmp_path):
    write_mmlu(tmp_path, "toy", [("q", ("a", "b", "c", "d"), 7)], "test")
    with pytest.raises(LocasError, match="answer '7'"):
        load_questions(data=tmp_path)
    with pytest.raises(LocasError, match="unknown MMLU subject"):
        load_questions(["nope"], data=tmp_path)
    write_mmlu(tmp_path, "toy", [("q", ("a", "b", "c", "d"), 1)], "test")
    with pytest.raises(LocasError, match="5-shot needs 5 dev examples"):
        evaluate_mmlu(tiny_lm("llama").model, char_tokenizer(), shots=5, data=tmp_path, progress=False)
    write_mmlu(tmp_path, "toy", [("a rather long development question " * 2, ("a", "b", "c", "d"), 1)] * 5, "dev")
    with pytest.raises(LocasError, match="more than the model's 256; use fewer --shots"):
        evaluate_mmlu(tiny_lm("llama").model, char_tokenizer(), shots=5, data=tmp_path, progress=False)


@pytest.mark.integration
def test_smollm2_real_mmlu_batched_equals_plain_forward():
    """Real tokenizer (BPE letters), real CSVs, 5-shot: the cached, padded batch matches one plain forward each."""
    from locas import LocasForCausalLM

    lm = LocasForCausalLM.from_pretrained("smollm2-135m")
    qs = load_questions(["astronomy"], limit_per_subject=3, seed=0)
    shots = load_questions(["astronomy"], split="dev")
    rep = evaluate_mmlu(lm.model, lm.tokenizer, qs, shots=5, batch_size=3, progress=False)
    by_index = {q.index: q for q in qs}
    for r in rep["records"]:
        ref = reference_logp(lm.model, lm.tokenizer, by_index[r["index"]], shots)
        assert torch.allclose(torch.tensor(r["logp"]), ref, atol=2e-3)
    assert rep["n"] == 3 and set(rep["categories"]) == {"STEM"}
