"""Self-study memorisation: probes, the distillation loss, a copy-task comparison, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from conftest import _COMMON, random_memory
from locas import LocasForCausalLM, cli
from locas.errors import LocasError
from locas.learn.config import TrainConfig
from locas.learn.objectives import ObjectiveSettings, SelfStudyConfig, make_objective
from locas.learn.objectives.selfstudy import distillation_loss
from locas.learn.segments import Segment, train_segments
from locas.learn.silence import firing, own_samples
from locas.probes.config import ProbeConfig
from locas.probes.families import ANSWER_FORMATS, GENERATION_TEMPLATES, _clean_generated, generated_probes, make_probes
from locas.probes.teacher import Example, answer_with_teacher
from locas.text.sentences import split_chunks

DOC = """In 1857 Mr. Moore bought a Hoe press in New York for the Minnesotian. The press arrived at St. Paul
by steamboat in the spring, and Moore paid 4,000 dollars for it.

The Gray Eagle left Dubuque at 9 o'clock and the Itasca left Prairie du Chien at noon. The Gray Eagle won
the race to St. Paul by a few minutes, and Goodhue wrote about it in the Pioneer.

In 1859 Governor Sibley called out the Pioneer Guards to Wright county. The Pioneer Guards marched for
three days and found nobody to arrest, so Sibley sent them home to St. Paul."""


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run far faster on one thread, above all on a shared, busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _word_tokenizer(text: str):
    """A real fast tokenizer (word level) over the words of ``text`` and of the probe templates."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    corpus = " ".join([text, *GENERATION_TEMPLATES.values(), *ANSWER_FORMATS.values(),
                       "Fill in the blank ____ In which year What does the text say about comes right after this "
                       "sentence Summarize passage that begins"])
    words = sorted({w for w, _ in pre.pre_tokenize_str(corpus)})
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<unk>")


def _word_lm(seed: int = 0) -> LocasForCausalLM:
    tok = _word_tokenizer(DOC)
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**{**_COMMON, "vocab_size": len(tok)})
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    return LocasForCausalLM(model, tokenizer=tok, name="tiny-words")


def test_probes_are_deterministic_capped_and_deduplicated():
    lm = _word_lm()
    chunks = split_chunks(lm.tokenizer, DOC, chunk_tokens=40)
    assert len(chunks) >= 3
    cfg = ProbeConfig(families=("cloze", "template", "instruction", "summary"), per_chunk=4, samples=2,
                      max_probe_tokens=5, chunk_tokens=40)
    a = make_probes(lm, chunks, cfg, seed=0, progress=False)
    b = make_probes(lm, chunks, cfg, seed=0, progress=False)
    assert [(p.family, p.chunk, p.prompt, p.reference) for p in a] == [
        (p.family, p.chunk, p.prompt, p.reference) for p in b]
    assert {p.family for p in a} >= {"cloze", "template", "instruction", "summary"}
    for c in range(len(chunks)):
        assert 1 <= sum(p.chunk == c for p in a) <= 4  # the cap holds per chunk
    assert len({p.key for p in a}) == len(a)  # deduplicated
    cloze = [p for p in a if p.family == "cloze"]
    assert all("____" in p.prompt and p.reference and p.reference in DOC.replace("\n", " ") for p in cloze)
    # another seed gives other probes; excluding the first set keeps a held-out set disjoint
    c = make_probes(lm, chunks, cfg, seed=1, exclude={p.key for p in a}, progress=False)
    assert c and not {p.key for p in a} & {p.key for p in c}
    one = make_probes(lm, chunks, ProbeConfig(families=("cloze",), per_chunk=1, chunk_tokens=40), progress=False)
    assert len(one) >= 3 and all(sum(p.chunk == c for p in one) <= 1 for c in range(len(chunks)))
    # model-written probes: sampled, yet reproducible under the seed
    g1 = generated_probes(lm, chunks[0], 0, "instruction", cfg, seed=5)
    g2 = generated_probes(lm, chunks[0], 0, "instruction", cfg, seed=5)
    g3 = generated_probes(lm, chunks[0], 0, "instruction", cfg, seed=6)
    assert g1 and [p.prompt for p in g1] == [p.prompt for p in g2] != [p.prompt for p in g3]
    with pytest.raises(LocasError, match="unknown probe family"):
        ProbeConfig(families=("riddles",))
    # model-written questions must be grounded in the chunk; preambles are stripped
    assert _clean_generated("What is the question that will be asked next?", "question", DOC) is None
    assert _clean_generated("A question about the text is: Who won the race to St. Paul?\nMore", "question",
                            DOC) == "Who won the race to St. Paul?"


def test_distillation_loss_is_zero_for_same_input_and_zero_memory():
    lm = _word_lm()
    g = torch.Generator().manual_seed(0)
    context = torch.randint(3, len(lm.tokenizer), (30,), generator=g).tolist()
    prompt = torch.randint(3, len(lm.tokenizer), (5,), generator=g).tolist()
    for topk in (8, len(lm.tokenizer)):
        a = answer_with_teacher(lm, context, [prompt], 6, topk)[0]
        ex = Example("question", context, prompt, a["answer"], a["values"], a["index"])
        zero = lm.init_memory(torch.tensor([context]), width=4)  # values are zero: exactly the base model
        same = float(distillation_loss(lm, zero, [ex], student_window=len(context)))
        assert abs(same) < 1e-7
        # the loss is not trivially zero: no context, or a non-zero memory, makes it positive
        assert float(distillation_loss(lm, zero, [ex], student_window=0)) > 1e-4
        assert float(distillation_loss(lm, random_memory(lm, width=4), [ex], student_window=len(context))) > 1e-4


# ---- copy task: a tiny model that learned to copy a key from its context ---------------------
BOS, KEY, SEP, Q = 1, 3, 4, 5
SYMBOLS = range(10, 40)


def _copy_model() -> LocasForCausalLM:
    """2-layer llama trained (about 4 s) on [BOS KEY a b c SEP Q a b c]: answer Q by copying the key."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    model = transformers.AutoModelForCausalLM.from_config(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(80):
        key = torch.randint(10, 40, (64, 3), generator=g)
        n = key.shape[0]
        seq = torch.cat([torch.full((n, 1), BOS), torch.full((n, 1), KEY), key, torch.full((n, 1), SEP),
                         torch.full((n, 1), Q), key], 1)  # (n, 10)
        logits = model(input_ids=seq).logits
        loss = torch.nn.functional.cross_entropy(logits[:, 6:9].reshape(-1, 40), seq[:, 7:10].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return LocasForCausalLM(model.eval(), name="copy")


def _copy_task():
    """The copy model and one key to memorise: (lm, key, document, the teacher's answer with the document in
    context, a hard-label probe example asking for the key, the document as a segment)."""
    lm = _copy_model()
    key = [17, 31, 22]
    document = [BOS, KEY, *key, SEP]
    teacher = answer_with_teacher(lm, document, [[Q]], 3, 40)[0]
    ex = Example("question", document, [Q], teacher["answer"], teacher["values"], teacher["index"], reference="key")
    return lm, key, document, teacher, ex, Segment(torch.tensor(document), (0, len(document)), window=len(document))


def _answer_nll(lm, memory, prompt, answer) -> float:
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        nll = lm.compute_nll(ids, memory)[0]
    return float(nll[len(prompt) - 1:].mean())


@pytest.mark.parametrize("loss", ["kl", "label"])
def test_selfstudy_moves_the_no_context_answer_toward_the_teacher_more_than_ntp(loss):
    lm = _copy_model()
    key = [17, 31, 22]
    document = [BOS, KEY, *key, SEP]
    teacher = answer_with_teacher(lm, document, [[Q]], 3, 40)[0]
    assert teacher["answer"] == key  # with the document in context the model copies the key
    assert teacher["nll"] < 0.3
    # kl: the teacher's distributions; label: the reference answer itself (no teacher)
    ex = Example("question", document, [Q], teacher["answer"], teacher["values"], teacher["index"],
                 reference="key" if loss == "label" else None)
    tokens = torch.tensor(document)
    segment = Segment(tokens, (0, len(document)), window=len(document))
    results = {}
    for name in ("ntp", "selfstudy"):  # the same 40 steps: 40 passes over one window, or over one probe
        cfg = TrainConfig(window_size=len(document), lr=3e-2, memory_width=8, seed=0, objective=name)
        objective = make_objective(cfg, ObjectiveSettings(selfstudy=SelfStudyConfig(ntp_weight=0.0, loss=loss)))
        learner, stats = train_segments(lm, [segment], objective, cfg, passes=40,
                                        examples=[ex] if name == "selfstudy" else None, progress=False)
        assert stats["segments"][0]["steps"] == 40 and stats["segments"][0]["skipped"] == 0
        results[name] = _answer_nll(lm, learner.full_memory(), [Q], key)
    base = _answer_nll(lm, None, [Q], key)
    gap = base - teacher["nll"]
    closed = {k: (base - v) / gap for k, v in results.items()}
    assert closed["selfstudy"] > 0.5  # self-study closes most of the no-context gap
    assert closed["selfstudy"] > closed["ntp"] + 0.3, closed


# ---- the command -----------------------------------------------------------------------------
def word_model_files(tmp_path):
    """The word-level model saved as a model directory, and DOC as a text file: (lm, model_dir, text, out)."""
    lm = _word_lm()
    model_dir = tmp_path / "tiny"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    text = tmp_path / "doc.txt"
    text.write_text(DOC)
    return lm, model_dir, text, tmp_path / "doc.locas"


def test_memorize_selfstudy_command_writes_memory_cache_and_recall(tmp_path, capsys):
    lm, model_dir, text, out = word_model_files(tmp_path)
    argv = ["memorize", str(text), "-o", str(out), "--model", str(model_dir), "--device", "cpu",
            "--objective", "selfstudy", "--families", "cloze,template", "--chunk-tokens", "40",
            "--probes-per-chunk", "3", "--heldout-per-chunk", "2", "--epochs", "2", "--memory-width", "4",
            "--window-size", "32", "--answer-tokens", "4", "--recall", "--heldout-families", "cloze,template",
            "--probe-loss", "kl", "--probe-style", "qa"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    cache = out.with_name(out.name + ".probes.json")
    recall = out.with_name(out.name + ".recall.json")
    assert out.is_file() and cache.is_file() and recall.is_file()
    assert "gap closed" in printed and "held-out" in printed
    report = json.loads(recall.read_text())
    assert report["summary"]["all"]["n"] >= 2 and "memory_f1" in report["summary"]["all"]
    sets = json.loads(cache.read_text())["sets"]
    train = {r["probe"] for r in sets["train-3-cloze,template-teacher"]}
    assert train and not train & {r["probe"] for r in sets["heldout-2-cloze,template-teacher"]}  # never trained on
    # a rerun reads the cached probes instead of making them again
    stamp = cache.stat().st_mtime_ns
    assert cli.main(argv) == 2  # the memory file exists: not replaced without --overwrite
    argv.append("--overwrite")
    assert cli.main(argv) == 0
    assert cache.stat().st_mtime_ns == stamp
    # probes asked in the prompt of `locas ask --prompt-style plain`: the student sees its empty-context prefix
    plain = ["plain" if a == "qa" else a for a in argv]
    assert cli.main(plain + ["--probe-cache", str(tmp_path / "plain.json")]) == 0
    row = json.loads((tmp_path / "plain.json").read_text())["sets"]["train-3-cloze,template-teacher"][0]
    prefix = row["student_prefix"]  # plain style: teacher = chunk + instruction, student = instruction
    assert prefix and len(row["context"]) > len(prefix) and row["context"][-len(prefix):] == prefix
    # bad input: one-line error
    capsys.readouterr()
    bad = ["riddles" if prev == "--families" else a for prev, a in zip([None, *argv], argv)]
    code = cli.main(bad)
    err = capsys.readouterr().err
    assert code == 2 and "unknown probe family" in err and err.count("\n") == 1


@pytest.mark.parametrize("method", ["locas", "lora"])
def test_locomo_harness_runs_the_selfstudy_objective(method, tmp_path):
    from locas.data.locomo import Conversation, QAItem, Session, Turn
    from locas.eval import locomo as harness
    from test_locomo_support import char_lm

    lm = char_lm(seed=1)
    backbone = {k: v.clone() for k, v in lm.model.state_dict().items()}
    sessions = [Session(1, "1:00 pm on 8 May, 2023", [Turn("Ann", "Last week I adopted a cat named Tom in Boston."),
                                                      Turn("Bob", "My sister Lisa has 3 cats.")]),
                Session(2, "9:15 am on 2 June, 2023", [Turn("Ann", "I ran the Boston marathon in 4 hours."),
                                                       Turn("Bob", "I bought a red bike from Carl.")])]
    conv = Conversation("conv-x", ("Ann", "Bob"), sessions, [QAItem("What is Ann's cat called?", 4, "Tom")])
    settings = harness.LocomoSettings(method=method, context_mode="none", max_new_tokens=3, batch_size=2)
    cfg = TrainConfig(window_size=64, memory_width=4, lr=5e-2, lora_rank=2, objective="selfstudy")
    out = harness.run_conversation(lm, conv, settings, cfg, memory_path=tmp_path / "m.locas", progress=False)
    stats = out["train"]["sessions"]
    assert len(stats) == 2 and all(s["probes"] > 0 and s["steps"] > 0 and s["skipped"] == 0 for s in stats)
    assert len(out["answers"]["none"]["memory"]["records"]) == 1
    assert all(torch.equal(v, backbone[k]) for k, v in lm.model.state_dict().items())  # backbone untouched
    if method == "locas":
        from locas.core.files import load_memory

        assert load_memory(tmp_path / "m.locas", model=lm)[..., 2].abs().sum() > 0  # the memory learned


def test_the_silence_term_quiets_the_memory_off_its_text_and_it_still_learns_the_answer():
    lm, key, document, teacher, ex, segment = _copy_task()
    off_ids = own_samples(lm, rows=4, tokens=32, seed=1)  # another draw than the one trained against (seed 0)
    fires, closed = {}, {}
    for weight in (0.0, 10.0):
        cfg = TrainConfig(window_size=len(document), lr=3e-2, memory_width=8, seed=0, objective="selfstudy",
                          tau_scale=4.0)
        objective = make_objective(cfg, ObjectiveSettings(selfstudy=SelfStudyConfig(ntp_weight=0.0,
                                                                                   silence_weight=weight)))
        learner, stats = train_segments(lm, [segment], objective, cfg, passes=40, examples=[ex], progress=False)
        assert ("silence" in stats["segments"][0]) == (weight > 0)
        fires[weight] = float(firing(lm, learner.full_memory(), None, off_ids).mean())
        base = _answer_nll(lm, None, [Q], key)
        closed[weight] = (base - _answer_nll(lm, learner.full_memory(), [Q], key)) / (base - teacher["nll"])
    assert fires[10.0] < 0.5 * fires[0.0], fires  # quiet on text it never saw
    assert closed[10.0] > 0.5, closed  # and still answers


@pytest.mark.parametrize("method", ["locas", "lora"])
def test_the_locality_term_keeps_the_model_on_unseen_text_and_it_still_learns_the_answer(method):
    from locas.learn.objectives.selfstudy import locality_kl

    lm, key, document, teacher, ex, segment = _copy_task()
    off_ids = own_samples(lm, rows=4, tokens=32, seed=1)  # another draw than the one trained against (seed 0)
    base = _answer_nll(lm, None, [Q], key)  # before any adapter is injected into the model
    moved, closed = {}, {}
    for weight in (0.0, 3.0):
        cfg = TrainConfig(window_size=len(document), lr=3e-2, memory_width=8, seed=0, objective="selfstudy",
                          tau_scale=4.0, lora_rank=2)
        study = SelfStudyConfig(ntp_weight=0.0, locality_weight=weight, silence_tokens=256)
        objective = make_objective(cfg, ObjectiveSettings(selfstudy=study))
        learner, stats = train_segments(lm, [segment], objective, cfg, method=method, passes=40, examples=[ex],
                                        progress=False)
        assert ("locality" in stats["segments"][0]) == (weight > 0)
        with torch.no_grad():
            moved[weight] = sum(float(locality_kl(learner, row[None])) for row in off_ids) / len(off_ids)
        with torch.no_grad():
            answered = float(learner.nll(torch.tensor([[Q, *key]]))[0].mean())
        closed[weight] = (base - answered) / (base - teacher["nll"])
        learner.finish()
    assert moved[3.0] < 0.5 * moved[0.0], moved  # the model moves less on text it never saw
    assert closed[3.0] > 0.5, closed  # and still answers


def test_the_decoy_term_leaves_questions_the_text_does_not_answer_as_the_base_model_answers_them():
    from locas.learn.learners import make_learner
    from locas.learn.objectives.selfstudy import SelfStudy, decoy_kl, probe_loss

    lm = _word_lm()
    segment = Segment.from_text(lm.tokenizer, DOC, 64)
    probes = ProbeConfig(families=("fact",), chunk_tokens=64)
    unseen = SelfStudy(TrainConfig(objective="selfstudy", seed=1), ObjectiveSettings(
        selfstudy=SelfStudyConfig(silence_tokens=256), probes=probes))  # decoys of another draw than trained on
    moved, fitted = {}, {}
    for weight in (0.0, 100.0):
        cfg = TrainConfig(window_size=64, lr=1e-1, memory_width=16, seed=0, objective="selfstudy", tau_scale=64.0)
        study = SelfStudyConfig(ntp_weight=0.0, decoy_weight=weight, silence_tokens=256)
        objective = make_objective(cfg, ObjectiveSettings(selfstudy=study, probes=probes))
        examples = objective.prepare(make_learner("locas", lm, cfg), segment)
        learner, stats = train_segments(lm, [segment], objective, cfg, passes=16, examples=examples, progress=False)
        assert ("decoy" in stats["segments"][0]) == (weight > 0)
        with torch.no_grad():
            moved[weight] = float(decoy_kl(learner, unseen.decoys(learner)))
            fitted[weight] = float(probe_loss(learner.logits, examples, "label"))
    with torch.no_grad(), lm.disabled():
        start = float(probe_loss(lambda ids, **kw: lm.model(input_ids=ids, **kw).logits, examples, "label"))
    assert moved[100.0] < 0.6 * moved[0.0], moved  # questions about other text: nearer the base model's answers
    assert start - fitted[100.0] > 0.4 * (start - fitted[0.0]), (start, fitted)  # and the text's own still learned
