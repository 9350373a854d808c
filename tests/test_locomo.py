"""LoCoMo loader, answer scoring, prefix-cached answering and the harness on tiny models."""

from __future__ import annotations

import json
import random

import pytest
import torch

from conftest import random_memory
from locas.core.model import ModelState
from locas.data.locomo import Conversation, QAItem, Session, Turn, load_locomo, parse_date
from locas.errors import LocasError
from locas.eval import locomo as harness
from locas.learn import objectives as registry
from locas.learn.config import TrainConfig
from locas.learn.objectives import GRPOConfig, ObjectiveSettings, make_objective
from locas.learn.objectives.grpo import cloze_items
from locas.learn.segments import Plan
from locas.text.decoding import Decoder
from locas.text.metrics import exact_match, f1_score, is_refusal, multi_answer_f1, normalize_answer, score_item
from locas.text.prompts import Prompt
from locas.text.tokens import tail_tokens
from test_locomo_support import char_lm, single_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")

# ---- loader ---------------------------------------------------------------------------------


def test_loader_counts_and_categories():
    convs = load_locomo()
    assert len(convs) == 10
    qa = [q for c in convs for q in c.qa]
    assert len(qa) == 1986
    hist = {k: sum(q.category == k for q in qa) for k in range(1, 6)}
    assert hist == {1: 282, 2: 321, 3: 96, 4: 841, 5: 446}
    adv = [q for q in qa if q.category == 5]
    assert all(q.adversarial_answer for q in adv)
    assert sum(q.answer is None for q in adv) == 444
    assert all(q.answer is not None for q in qa if q.category != 5)
    c26 = next(c for c in convs if c.sample_id == "conv-26")
    assert c26.speakers == ("Caroline", "Melanie") and len(c26.sessions) == 19 and len(c26.qa) == 199
    assert c26.qa[0].category_name == "temporal"
    dates = [s.when for s in c26.chronological()]
    assert all(d is not None for d in dates) and dates == sorted(dates)


def _conv() -> Conversation:
    """Three sessions stored out of date order; session 2 happened first."""
    sessions = [
        Session(1, "1:00 pm on 8 May, 2023", [Turn("Ann", "I adopted a cat named Tom."), Turn("Bob", "Nice cat!")]),
        Session(2, "9:15 am on 2 January, 2023", [Turn("Ann", "I went hiking in Peru."),
                                                  Turn("Bob", "I bought a red bike.", caption="a photo of a bike")]),
        Session(3, "7:30 pm on 20 June, 2023", [Turn("Ann", "Tom likes fish."), Turn("Bob", "My bike is red.")]),
    ]
    qa = [QAItem("What is the cat called?", 4, "Tom"), QAItem("When did Ann hike?", 2, "January 2023"),
          QAItem("What did Bob buy and what did Ann adopt?", 1, "bike, cat"),
          QAItem("What might Ann like?", 3, "animals; pets"), QAItem("What did Bob adopt?", 5, None, "a cat")]
    return Conversation("conv-x", ("Ann", "Bob"), sessions, qa)


def test_chronological_order_and_rendering():
    conv = _conv()
    assert [s.index for s in conv.chronological()] == [2, 1, 3]
    assert parse_date("1:56 pm on 8 May, 2023").day == 8 and parse_date("garbage") is None
    text = conv.text()
    assert text.index("Peru") < text.index("Tom") < text.index("fish")
    assert 'Bob said, "I bought a red bike." and shared a photo of a bike.' in text


def test_first_sessions_keeps_only_questions_they_answer():
    conv = _conv()
    for q, ev in zip(conv.qa, (["D1:1"], ["D2:1"], ["D2:2", "D1:1"], ["D3:1; D1:2"], [])):
        q.evidence = ev
    cut = conv.first_sessions(2)  # chronological: sessions 2 (January) and 1 (May)
    assert [s.index for s in cut.chronological()] == [2, 1] and len(conv.sessions) == 3
    assert [q.question for q in cut.qa] == [q.question for q in conv.qa[:3]]  # D3 evidence and no evidence dropped
    assert [q.question for q in conv.first_sessions(1).qa] == ["When did Ann hike?"]
    assert conv.qa[3].evidence_sessions == {3, 1}
    with pytest.raises(LocasError, match="max-sessions"):
        conv.first_sessions(0)
    real = next(c for c in load_locomo() if c.sample_id == "conv-30").first_sessions(6)
    assert len(real.sessions) == 6 and len(real.qa) == 44
    assert all(q.evidence_sessions <= {s.index for s in real.sessions} for q in real.qa)


# ---- scoring ----------------------------------------------------------------------------------


def test_normalisation_and_f1_on_known_cases():
    assert normalize_answer("The Cat, and a Dog!") == "cat dog"
    assert f1_score("Paris", "paris.") == 1.0
    assert f1_score("a sunrise", "Caroline painted a sunrise") == pytest.approx(2 * 1 * 1 / 3 / (1 + 1 / 3))
    assert f1_score("running dogs", "the dog runs") == 1.0  # Porter stems: run, dog
    assert f1_score("blue", "red") == 0.0
    assert exact_match("The painting.", "painting") == 1.0 and exact_match("a painting of", "painting") == 0.0
    # multi-hop: each gold part takes its best predicted part
    assert multi_answer_f1("cat, bike", "bike, cat") == 1.0
    assert multi_answer_f1("cat", "bike, cat") == 0.5
    assert is_refusal("That is Not mentioned in the conversation.") and not is_refusal("in May")


def test_score_item_categories():
    assert score_item("animals", 3, "animals; pets")["f1"] == 1.0  # open-domain keeps text before ';'
    assert score_item("pets", 3, "animals; pets")["f1"] == 0.0
    adv = score_item("researching adoption agencies", 5, None, "researching adoption agencies")
    assert adv["f1"] == -1.0 and adv["refused"] == 0.0 and adv["em"] == 0.0
    declined = score_item("Not mentioned in the conversation", 5, None, "a cat")
    assert declined["f1"] == 0.0 and declined["refused"] == 1.0
    s = harness.summarize([{"category": 4, "f1": 1.0, "em": 1.0}, {"category": 4, "f1": 0.0, "em": 0.0},
                           {"category": 5, "f1": -0.5, "em": 1.0, "refused": 1.0}])
    assert s["single-hop"]["f1"] == 50.0 and s["adversarial"]["f1"] == -50.0 and s["adversarial"]["refused"] == 100
    assert s["overall"]["n"] == 2  # adversarial not in overall


# ---- prefix-cached answering -----------------------------------------------------------------


def _naive_greedy(model, ids, steps, stop):
    ids = torch.tensor(ids)[None]
    out = []
    for _ in range(steps):
        t = int(model(input_ids=ids).logits[0, -1].argmax())
        if t in stop:
            break
        out.append(t)
        ids = torch.cat([ids, torch.tensor([[t]])], 1)
    return out


@pytest.mark.parametrize("style", ["plain", "chat"])
def test_prefix_cache_answers_equal_full_recompute(style):
    lm = char_lm(seed=3, chat=style == "chat")
    tok = lm.tokenizer
    mem = random_memory(lm, width=4, scale=2.0)
    ctx = tok('Ann said, "I adopted a cat named Tom."\n', add_special_tokens=False)["input_ids"]
    prompt = Prompt.build(tok, ctx, style=style)
    questions = ["What is the cat called?", "Who?", "When did Ann go hiking in Peru, exactly?", "Why?", "What?"]
    suffixes = [prompt.suffix_ids(q) for q in questions]
    assert len({len(s) for s in suffixes}) > 2  # different lengths -> left padding inside the batch
    with ModelState(memory=mem).apply(lm) as model:
        answerer = Decoder(model, tok, prompt.prefix_ids, max_new_tokens=6, batch_size=2, newline=False,
                           prefill_chunk=16)  # chunked prefill too
        got = answerer.answer_ids(suffixes)
        want = [_naive_greedy(model, prompt.prefix_ids + s, 6, answerer.stop_ids) for s in suffixes]
    assert got == want
    assert len({tuple(g) for g in got}) > 1  # the answers depend on the question
    assert answerer.answered == 5 and answerer.questions_per_second > 0


def test_tail_tokens_and_prompt_errors():
    lm = char_lm()
    ids = lm.tokenizer("ab\ncd\nef", add_special_tokens=False)["input_ids"]
    assert lm.tokenizer.decode(tail_tokens(ids, 5, lm.tokenizer)) == "ef"  # starts after a line break
    assert tail_tokens(ids, 0) == [] and tail_tokens(ids, 100) == ids
    with pytest.raises(LocasError, match="no chat template"):
        Prompt.build(lm.tokenizer, None, style="chat")


def test_a_plain_prompt_asks_the_question_then_the_answer_cue():
    """Without a chat template: context, instruction, "Question: ...", then "Answer:" on a line of its own."""
    from locas.text.prompts import ANSWER_CUE, DOCUMENT_INSTRUCTION

    tok = char_lm().tokenizer
    ctx = tok("Ann has a cat.\n", add_special_tokens=False)["input_ids"]
    prompt = Prompt.build(tok, ctx, style="plain", instruction=DOCUMENT_INSTRUCTION)
    text = tok.decode(prompt.prefix_ids + prompt.suffix_ids("Who has a cat?"))
    assert ANSWER_CUE == "\nAnswer:"
    assert text.endswith(f"Ann has a cat.\n{DOCUMENT_INSTRUCTION}\n\nQuestion: Who has a cat?\nAnswer:"), text
    follow_up = tok.decode(prompt.suffix_ids("Its name?", history=[("Who has a cat?", "Ann")]))
    assert follow_up == "Who has a cat?\nAnswer: Ann\nQuestion: Its name?\nAnswer:", follow_up


# ---- harness ------------------------------------------------------------------------------------


def test_date_split_memorises_sessions_in_chronological_order(monkeypatch):
    lm = char_lm()
    conv = _conv()
    seen = []

    class Recorder(registry.Objective):
        def update(self, learner, optimizer, segment, plan):
            seen.append((int(segment.name), segment.spans))
            return {"nll": 0.0}

    monkeypatch.setitem(registry.OBJECTIVES, "record", Recorder)  # the registry is the extension point
    settings = harness.LocomoSettings(method="locas")
    toks = harness.tokenize_conversation(lm.tokenizer, conv)
    cfg = TrainConfig(window_size=40, memory_width=4, objective="record")
    learner, stats = harness.memorize_conversation(lm, toks, settings, cfg, progress=False)
    assert [i for i, _ in seen] == [2, 1, 3] == stats["order"]
    for (index, spans), (session, start, end) in zip(seen, toks.sessions):
        assert session.index == index and spans[0][0] == start and spans[-1][1] == end
        assert all(e - s <= 40 for s, e in spans)
    assert lm.tokenizer.decode(toks.tokens[toks.sessions[0][1]:toks.sessions[0][2]]).startswith("DATE: 9:15 am")


@pytest.mark.parametrize("method,objective", [("locas", "ntp"), ("locas", "sd"), ("locas", "mix"), ("locas", "grpo"),
                                              ("lora", "ntp"), ("lora", "sd"), ("lora", "mix"), ("lora", "grpo"),
                                              ("none", "sd")])
def test_end_to_end_every_mode_method_and_objective(method, objective, tmp_path):
    lm = char_lm(seed=1)
    backbone = {k: v.clone() for k, v in lm.model.state_dict().items()}
    conv = _conv()
    settings = harness.LocomoSettings(method=method, context_mode="date_split", extra_contexts=("full", "none"),
                                      recent_tokens=60, max_new_tokens=3, batch_size=2)
    objectives = ObjectiveSettings(grpo=GRPOConfig(group_size=3, max_new_tokens=3, items_per_session=2,
                                                   items_per_step=2))
    cfg = TrainConfig(window_size=64, memory_width=4, lr=5e-2, lora_rank=2, sd_context=128, objective=objective)
    path = tmp_path / "m.locas"
    out = harness.run_conversation(lm, conv, settings, cfg, objectives=objectives, memory_path=path, progress=False)
    for mode in ("date_split", "full", "none"):
        part = out["answers"][mode]
        assert len(part["memory"]["records"]) == len(conv.qa) == len(part["control"]["records"])
        assert part["memory"]["questions_per_s"] > 0
    ctx = {m: out["answers"][m]["control"]["context_tokens"] for m in ("date_split", "full", "none")}
    assert ctx["none"] == 0 < ctx["date_split"] <= 60 < ctx["full"] <= len(harness.tokenize_conversation(
        lm.tokenizer, conv).tokens)
    assert [type(n) for n in lm.model.state_dict()] and all(
        torch.equal(v, backbone[k]) for k, v in lm.model.state_dict().items())  # backbone untouched, LoRA unloaded
    if method == "none":
        assert "train" not in out and not path.exists()
        return
    assert out["train"]["extra_params"] > 0 and len(out["train"]["sessions"]) == 3
    if method == "locas":
        from locas.core.files import load_memory

        mem = load_memory(path, model=lm)
        if objective == "grpo":  # a random tiny model rarely earns a reward; learning is tested in test_grpo.py
            assert all("reward" in st for st in out["train"]["sessions"])
        else:
            assert mem[..., 2].abs().sum() > 0  # the memory learned something
        # answering with the file reproduces the in-run answers
        toks = harness.tokenize_conversation(lm.tokenizer, conv)
        again = harness.answer_conversation(lm, conv, toks, ModelState(memory=mem), "none", settings)
        assert [r["prediction"] for r in again["records"]] == [
            r["prediction"] for r in out["answers"]["none"]["memory"]["records"]]


def test_max_sessions_cuts_memorisation_and_questions():
    lm = char_lm(seed=1)
    conv = _conv()
    for q, ev in zip(conv.qa, (["D1:1"], ["D2:1"], ["D1:2"], ["D3:1"], ["D3:2"])):
        q.evidence = ev
    settings = harness.LocomoSettings(method="locas", context_mode="full", max_new_tokens=2, max_sessions=2)
    cfg = TrainConfig(window_size=64, memory_width=4, lr=5e-2, objective="ntp")
    out = harness.run_conversation(lm, conv, settings, cfg, progress=False)
    assert out["sessions"] == 2 and [s["session"] for s in out["train"]["sessions"]] == [2, 1]
    recs = out["answers"]["full"]["memory"]["records"]
    assert [r["question"] for r in recs] == [q.question for q in conv.qa[:3]]
    full_tokens = len(harness.tokenize_conversation(lm.tokenizer, conv).tokens)
    assert out["tokens"] < full_tokens and "fish" not in lm.tokenizer.decode(
        harness.tokenize_conversation(lm.tokenizer, conv.first_sessions(2)).tokens)
    with pytest.raises(LocasError, match="raise --max-sessions"):
        harness.run_conversation(lm, _conv(), settings, cfg, progress=False)  # no evidence: no question left


def _plan(passes=2, deadline=None):
    return Plan(passes, random.Random(0), None, deadline=deadline)


def test_plan_passes_then_cpu_deadline():
    import itertools
    import time

    assert list(_plan().batches([1, 2, 3], batch=2)) == [[1, 2], [3], [1, 2], [3]]  # the plan's passes
    assert list(_plan().batches([1, 2, 3], passes=1)) == [[1], [2], [3]]
    assert list(_plan().batches([], passes=5)) == []
    assert list(_plan(deadline=time.process_time() - 1).batches([1, 2, 3])) == [[1]]  # spent: the first batch only
    running = _plan(deadline=time.process_time() + 60).batches([1, 2, 3], batch=2)
    assert len(list(itertools.islice(running, 10))) == 10  # budget left: keeps cycling past the pass count
    items = list(range(8))
    shuffled = list(_plan().batches(items, batch=8, shuffle=True))
    assert len(shuffled) == 2 and sorted(shuffled[0]) == list(range(8)) and shuffled[0] != list(range(8))


def test_session_budget_trains_each_session_for_its_cpu_seconds():
    lm = char_lm(seed=1)
    cfg = TrainConfig(window_size=64, memory_width=4, lr=5e-2, objective="ntp")
    base = dict(method="locas", context_mode="none", max_new_tokens=2)
    one_pass = harness.run_conversation(lm, _conv(), harness.LocomoSettings(**base), cfg, progress=False)["train"]
    budget = 0.25
    timed = harness.run_conversation(lm, _conv(), harness.LocomoSettings(**base, session_budget=budget), cfg,
                                     progress=False)["train"]
    for a, b in zip(one_pass["sessions"], timed["sessions"]):
        assert b["steps"] > a["steps"] >= 1 and b["cpu_s"] >= budget  # more passes, until the budget is spent
    first = one_pass["sessions"][0]["nll"], timed["sessions"][0]["nll"]  # scored before any training: the same
    assert first[0] == pytest.approx(first[1], rel=1e-5)
    assert timed["train_cpu_s"] >= budget * len(timed["sessions"])
    with pytest.raises(LocasError, match="session-budget"):
        harness.LocomoSettings(**base, session_budget=0)


def test_paired_f1_difference_is_a_paired_bootstrap():
    rng = random.Random(0)
    a = [{"question": f"q{i}", "category": 4 if i % 2 else 1, "f1": rng.random()} for i in range(200)]
    same = harness.paired_f1_difference(a, [dict(r) for r in a])
    assert same == (0.0, 0.0, 0.0)
    better = [{**r, "f1": r["f1"] + (0.1 if r["category"] == 4 else 0.0)} for r in a]
    d, lo, hi = harness.paired_f1_difference(better, a, "single-hop")  # category 4 = single-hop
    assert d == pytest.approx(10.0) and lo == pytest.approx(10.0) and hi == pytest.approx(10.0)  # constant shift
    d, lo, hi = harness.paired_f1_difference(better, a)  # half the questions move: 5 points, interval around it
    assert d == pytest.approx(5.0) and lo < 5.0 < hi and hi - lo < 10
    trap = [{**r, "category": 5, "f1": 1.0} for r in a[:3]] + a[3:]  # adversarial questions stay out of "overall"
    assert harness.paired_f1_difference(trap, [{**r, "f1": 0.0} if r["category"] == 5 else r for r in trap]) == (
        0.0, 0.0, 0.0)
    noisy = [{**r, "f1": rng.random()} for r in a]
    d, lo, hi = harness.paired_f1_difference(noisy, a)
    assert lo < d < hi and lo < 0 < hi  # unrelated scores: the interval covers zero
    assert all(x != x for x in harness.paired_f1_difference(a, a, "temporal"))  # no such question: NaN
    with pytest.raises(LocasError, match="different questions"):
        harness.paired_f1_difference(a, a[::-1])


def test_tables_show_missing_categories_as_dash():
    from locas.eval.report import format_table, markdown_table

    row = harness.table_rows({"m [none]": {"summary": harness.summarize([
        {"category": 4, "f1": 0.5, "em": 0.0}]), "extra_params": 0, "train_s": 0.0}})[1][0]
    assert row[1] == 50.0 and row[2] != row[2]  # single-hop measured; multi-hop has no question (NaN)
    assert "nan" not in format_table(["a", "b"], [["x", float("nan")]]) + markdown_table(["a"], [[float("nan")]])
    assert format_table(["a", "b"], [["x", float("nan")]]).splitlines()[-1].split() == ["x", "-"]


def test_settings_validation():
    with pytest.raises(LocasError, match="context mode"):
        harness.LocomoSettings(context_mode="half")
    with pytest.raises(LocasError, match="unknown objective 'xyz'"):
        make_objective(TrainConfig(objective="XYZ"))
    with pytest.raises(LocasError, match="unknown LoCoMo method"):
        harness.LocomoSettings(method="rag")


# ---- CLI: locomo -> memory file -> ask / chat -----------------------------------------------------


def _write_dataset(root):
    conv = _conv()
    raw = {"sample_id": "conv-x", "conversation": {"speaker_a": "Ann", "speaker_b": "Bob"},
           "qa": [{k: v for k, v in {"question": q.question, "category": q.category, "answer": q.answer,
                                     "adversarial_answer": q.adversarial_answer, "evidence": []}.items()
                   if v is not None} for q in conv.qa]}
    for s in conv.sessions:
        raw["conversation"][f"session_{s.index}_date_time"] = s.date
        raw["conversation"][f"session_{s.index}"] = [
            {"speaker": t.speaker, "text": t.text, "dia_id": f"D{s.index}:{i}",
             **({"blip_caption": t.caption} if t.caption else {})} for i, t in enumerate(s.turns, 1)]
    (root / "locomo").mkdir(parents=True)
    (root / "locomo" / "locomo10.json").write_text(json.dumps([raw]))


def test_cli_locomo_ask_chat(tmp_path, capsys):
    from locas.cli import build_parser, main
    from locas.cli.commands import chat

    lm = char_lm(seed=2, chat=True)
    model_dir = tmp_path / "model"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    _write_dataset(tmp_path / "data")
    out = tmp_path / "run"
    common = ["--model", str(model_dir), "--data-dir", str(tmp_path / "data"), "--device", "cpu"]
    assert main(["locomo", "--method", "locas", "--objective", "ntp", "--context-mode", "none",
                 "--conversations", "conv-x", "--window-size", "64", "--memory-width", "4", "--max-new-tokens", "3",
                 "-o", str(out), *common]) == 0
    payload = json.loads((out / "results.json").read_text())
    assert set(payload["methods"]) == {"locas-NTP [none]", "no-memory [none]"}
    assert payload["methods"]["locas-NTP [none]"]["summary"]["overall"]["n"] == 4
    assert (out / "results.md").read_text().count("|") > 20 and (out / "f1_by_category.png").stat().st_size > 1000
    memfile = out / "memories" / "conv-x.locas"
    assert memfile.is_file()
    capsys.readouterr()
    common = common[:2] + common[4:]  # ask and chat read no data directory
    assert main(["ask", "What is the cat called?", "--memory", str(memfile), "--max-new-tokens", "3", *common]) == 0
    assert capsys.readouterr().out.endswith("\n")  # one answer line (a random tiny model may answer with spaces)
    ctx = tmp_path / "ctx.txt"
    ctx.write_text("Ann said the cat is Tom.\n")
    assert main(["ask", "Cat?", "--memory", str(memfile), "--context", str(ctx), *common]) == 0
    assert main(["ask", "Cat?", "--memory", str(tmp_path / "missing.locas"), *common]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["ask", str(memfile), "Cat?", *common]) == 2  # the 0.1 form: told how to write it now
    assert "--memory" in capsys.readouterr().err
    assert main(["locomo", "--conversations", "conv-404", "-o", str(out), *common, "--data-dir",
                 str(tmp_path / "data")]) == 2
    args = build_parser().parse_args(["chat", "--memory", str(memfile), "--max-new-tokens", "4", *common])
    questions = iter(["Who is Tom?", "And Bob?", ""])
    chat.run(args, input_fn=lambda _: next(questions))
    assert "ask a question" in capsys.readouterr().out


def test_grpo_cloze_items_from_a_session():
    lm = char_lm()
    session = Session(1, "1:00 pm on 8 May, 2023", [Turn("Ann", "Yesterday I adopted a lovely kitten named Tom "
                                                            "from the shelter downtown."), Turn("Bob", "Ok.")])
    conv = Conversation("c", ("Ann", "Bob"), [session], [])
    segment = harness.session_segments(harness.tokenize_conversation(lm.tokenizer, conv), TrainConfig())[0]
    items = cloze_items(segment, lm.tokenizer, random.Random(0), n=5)
    assert len(items) == 1  # one item per usable turn; "Ok." is too short
    prompt = lm.tokenizer.decode(items[0].prompt_ids)
    assert prompt.startswith('DATE: 1:00 pm on 8 May, 2023\nAnn said, "Yesterday I')
    assert (prompt.split('"', 1)[1] + " " + items[0].target).strip() in session.turns[0].text


@pytest.mark.integration
def test_smollm2_prefix_cache_matches_generate_on_real_conversation():
    """SmolLM2 + conv-26: cached-prefix batched answers equal transformers' own greedy generate()."""
    from locas import LocasForCausalLM
    from locas.data.locomo import get_conversation

    lm = LocasForCausalLM.from_pretrained("smollm2-135m")
    conv = get_conversation("conv-26")
    toks = harness.tokenize_conversation(lm.tokenizer, conv)
    ctx = tail_tokens(toks.tokens.tolist(), 400, lm.tokenizer)
    prompt = Prompt.build(lm.tokenizer, ctx)
    assert prompt.style == "chat"
    suffixes = [harness.question_suffix(prompt, q) for q in conv.qa[:3]]
    with ModelState().apply(lm) as model:
        answerer = Decoder(model, lm.tokenizer, prompt.prefix_ids, max_new_tokens=10, batch_size=3)
        got = answerer.answer_ids(suffixes)
        for s, g in zip(suffixes, got):
            ids = torch.tensor(prompt.prefix_ids + s)[None]
            ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                                 eos_token_id=sorted(answerer.stop_ids))[0, ids.shape[1]:].tolist()
            ref = [t for t in ref if t not in answerer.stop_ids]
            assert g == ref[:len(g)] and len(g) >= 1 and (len(g) == len(ref) or len(g) == 10)
