"""`locas serve` over real HTTP on 127.0.0.1: the official openai client, exactness against ``lm.generate``,
heterogeneous batches, uploads, jobs, restarts, isolation between keys, and every bad input.

A tiny character-level chat model serves (``max_positions=256``, so context limits are cheap to hit); the model, its
memory files and the server are started by tests/serve_support.py, as for tests/test_schema_fuzz.py.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import math
import threading
import time

import httpx
import pytest
import torch

from conftest import random_memory
from locas.errors import LocasError
from locas.learn.stream import window_spans
from locas.serve.app import Limits, Server, serving
from locas.serve.auth import ApiKeys
from locas.serve.store import check_id
from serve_support import memory_files, open_server, served_lm, upload

PROMPTS = ["Ann adopted a cat", "Hi", "Bob bought a red bike from Carl and", "x"]


@pytest.fixture(scope="module")
def lm():
    return served_lm()


@pytest.fixture(scope="module")
def files(lm, tmp_path_factory):
    """Memory files of several widths for the served model, and one of another model."""
    return memory_files(lm, tmp_path_factory.mktemp("serve-files"))


@pytest.fixture(scope="module")
def server(lm, files, tmp_path_factory):
    """An open server (no keys) with memories a, b, c uploaded; yields (url, Server)."""
    with open_server(lm, files, tmp_path_factory.mktemp("served")) as (url, srv):
        yield url, srv


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server[0], timeout=60) as c:
        yield c


def expected(lm, prompt: str, memory, max_new_tokens: int, eos=None) -> str:
    """What ``lm.generate`` (transformers, greedy) continues ``prompt`` with under ``memory``."""
    ids = torch.tensor([lm.tokenizer(prompt)["input_ids"]])
    out = lm.generate(ids, memory=memory, max_new_tokens=max_new_tokens, do_sample=False,
                      pad_token_id=lm.tokenizer.pad_token_id, eos_token_id=eos)
    return lm.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def complete(client, **body) -> dict:
    r = client.post("/v1/completions", json={"max_tokens": 12, "temperature": 0, **body})
    assert r.status_code == 200, r.text
    return r.json()


# ---- exactness -------------------------------------------------------------------------------------------
def test_greedy_completion_equals_lm_generate(server, client, lm, files):
    from locas import load_memory

    for name in "ab":
        memory = load_memory(files[name], model=lm)
        for prompt in PROMPTS[:2]:
            got = complete(client, model=name, prompt=prompt)["choices"][0]["text"]
            assert got == expected(lm, prompt, memory, 12), (name, prompt)
    plain = complete(client, model=server[1].model_id, prompt=PROMPTS[0])["choices"][0]["text"]
    assert plain == expected(lm, PROMPTS[0], None, 12)  # no memory: the exact base model
    with_memory = complete(client, model="a", prompt=PROMPTS[0])["choices"][0]["text"]
    assert with_memory != plain  # the memory matters (so the equalities above say something)


def test_concurrent_requests_with_different_memories_equal_each_alone(server, client):
    url, srv = server
    cases = [(m, p) for m, p in zip(["a", "b", None, "c", ["a", "b"], "a"], PROMPTS + PROMPTS[:2])]

    def body(memory, prompt):
        return {"model": srv.model_id, "memory": memory, "prompt": prompt, "max_tokens": 10, "temperature": 0}

    alone = [complete(client, **body(m, p))["choices"][0]["text"] for m, p in cases]
    before = srv.batcher.shared_steps
    results: list = [None] * len(cases)

    def ask(i):
        with httpx.Client(base_url=url, timeout=60) as c:
            results[i] = c.post("/v1/completions", json=body(*cases[i])).json()["choices"][0]["text"]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == alone
    assert srv.batcher.shared_steps > before  # they really were decoded together
    assert len(set(alone)) > 2


def test_batched_rows_sample_on_their_own(lm):
    """Per-row sampling and limits in one batch: a row's tokens do not depend on the other rows, a greedy
    row in a sampled batch is the greedy continuation, and a row that ends (its stop) ends only itself."""
    from locas.serve.batcher import Batcher, Generation
    from locas.text.decoding import Sampling

    prompts = [lm.tokenizer(p)["input_ids"] for p in PROMPTS[:3]]

    def sampler(seed):
        return Sampling(temperature=1.5, top_p=0.95, generator=torch.Generator().manual_seed(seed))

    def run(rows):  # rows: (prompt index, max tokens, sampler seed or None, stop_ids); submitted together
        batcher = Batcher(lm, max_batch=4, max_wait_ms=200)
        try:
            gens = [batcher.submit(Generation(prompts[i], max_tokens=n, stop_ids=stop,
                                              sampling=None if seed is None else sampler(seed)))
                    for i, n, seed, stop in rows]
            return [g.future.result(timeout=60).tokens for g in gens], batcher.peak
        finally:
            batcher.close()

    none = frozenset()
    (together, peak) = run([(0, 5, 10, none), (1, 3, None, none), (2, 6, 11, none)])
    assert peak == 3 and [len(t) for t in together] == [5, 3, 6]
    assert together[0] == run([(0, 5, 10, none)])[0][0] and together[2] == run([(2, 6, 11, none)])[0][0]
    assert together[1] == run([(1, 3, None, none)])[0][0]
    assert run([(0, 5, 12, none)])[0][0] != together[0]  # the seed matters, so the equalities mean something
    greedy, alone = run([(0, 6, None, none)])[0][0], run([(1, 6, None, none)])[0][0]
    stop = alone[2]  # row 1 stops at its third token (or earlier, if that token came before)
    cut = run([(0, 6, None, none), (1, 6, None, frozenset({stop})), (2, 6, None, none)])[0]
    assert cut[1] == alone[:alone.index(stop)] and len(cut[1]) <= 2
    assert cut[0] == greedy and len(cut[2]) == 6  # the others go on to their limits


def test_a_request_joins_a_running_batch(lm):
    """Continuous batching: a request that comes while another is decoding joins it at the next step (it
    is done long before the first one), and both give exactly what each gives alone. Deterministic: the long
    row's first text holds the decoding thread until the short request is queued."""
    from locas.serve.batcher import Batcher, Generation

    memory = random_memory(lm, width=4, seed=11, scale=2.0)
    batcher = Batcher(lm, max_batch=4, max_wait_ms=1)
    try:
        started, queued = threading.Event(), threading.Event()

        def hold(delta):  # the long row is at most a few tokens in when the short one joins
            started.set()
            queued.wait(60)

        ids = [lm.tokenizer(p)["input_ids"] for p in PROMPTS[:2]]
        long = batcher.submit(Generation(ids[0], max_tokens=120, stop_ids=frozenset(), listener=hold))
        assert started.wait(60)
        short = batcher.submit(Generation(ids[1], memory=memory, max_tokens=6, stop_ids=frozenset()))
        queued.set()
        short.future.result(timeout=60)
        assert not long.future.done() and batcher.peak == 2
        long.future.result(timeout=60)
    finally:
        batcher.close()
    assert long.finish_reason == short.finish_reason == "length"
    assert long.text == expected(lm, PROMPTS[0], None, 120, eos=[])
    assert short.text == expected(lm, PROMPTS[1], memory, 6, eos=[])
    assert lm.wrappers[0].memory is None  # idle again: the plain base model


def test_stacked_memories_equal_the_stacked_file(server, client, files, lm, tmp_path):
    from locas.cli.main import main

    out = tmp_path / "ab.locas"
    model_dir = tmp_path / "model"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    assert main(["stack", str(files["a"]), str(files["b"]), "-o", str(out), "--model", str(model_dir),
                 "--device", "cpu"]) == 0
    assert upload(client, out, "ab-file").status_code == 201
    for prompt in PROMPTS[:3]:
        by_request = complete(client, model=server[1].model_id, memory=["a", "b"], prompt=prompt)
        by_file = complete(client, model="ab-file", prompt=prompt)
        assert by_request["choices"][0]["text"] == by_file["choices"][0]["text"]
    assert client.delete("/v1/memories/ab-file").status_code == 200


# ---- the openai client -----------------------------------------------------------------------------------
def test_openai_client_completion_and_chat_streaming_and_not(server, lm, files):
    from openai import OpenAI

    from locas import load_memory

    url, srv = server
    api = OpenAI(base_url=f"{url}/v1", api_key="unused")
    models = [m.id for m in api.models.list().data]
    assert models[0] == srv.model_id and {"a", "b", "c"} <= set(models)

    done = api.completions.create(model="a", prompt=PROMPTS[0], max_tokens=8, temperature=0)
    assert done.choices[0].text == expected(lm, PROMPTS[0], load_memory(files["a"], model=lm), 8)
    assert done.usage.prompt_tokens == len(lm.tokenizer(PROMPTS[0])["input_ids"])
    assert done.choices[0].finish_reason == "length" and done.usage.completion_tokens == 8
    assert done.usage.total_tokens == done.usage.prompt_tokens + 8
    streamed = api.completions.create(model="a", prompt=PROMPTS[0], max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == done.choices[0].text

    messages = [{"role": "user", "content": "What did Ann adopt?"}]
    chat = api.chat.completions.create(model="b", messages=messages, max_tokens=8, temperature=0)
    ids = lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    turn_end = [lm.tokenizer.eos_token_id, lm.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert chat.choices[0].message.content == expected(lm, ids, load_memory(files["b"], model=lm), 8, turn_end)
    chunks = list(api.chat.completions.create(model="b", messages=messages, max_tokens=8, temperature=0,
                                              stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == chat.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")

    extra = api.completions.create(model=srv.model_id, prompt="Hi", max_tokens=4, temperature=0,
                                   extra_body={"memory": "a"})
    assert extra.choices[0].text == api.completions.create(model="a", prompt="Hi", max_tokens=4,
                                                           temperature=0).choices[0].text


def test_sampling_seed_n_and_stop(client):
    body = {"model": "a", "prompt": "Ann", "max_tokens": 12, "temperature": 1.0, "seed": 7}
    one, two = complete(client, **body), complete(client, **body)
    assert one["choices"][0]["text"] == two["choices"][0]["text"]  # a seed gives the same draw
    several = complete(client, **body, n=3)["choices"]
    assert [c["index"] for c in several] == [0, 1, 2] and several[0]["text"] == one["choices"][0]["text"]
    assert len({c["text"] for c in several}) > 1
    full = complete(client, model="a", prompt="Ann", max_tokens=12)["choices"][0]["text"]
    stop = full[3:5]
    cut = complete(client, model="a", prompt="Ann", max_tokens=12, stop=[stop])["choices"][0]
    assert cut["text"] == full[:full.find(stop)] and cut["finish_reason"] == "stop"
    early = {"model": "a", "prompt": "Ann", "max_tokens": 20, "temperature": 1.0, "seed": 1}  # draws EOS at once
    assert complete(client, **early)["choices"][0]["finish_reason"] == "stop"
    past = complete(client, **early, ignore_eos=True)
    assert past["choices"][0]["finish_reason"] == "length" and past["usage"]["completion_tokens"] == 20


def test_sampling_at_its_extremes_is_greedy_not_an_error(client):
    """A temperature so low that logits / temperature overflows fp32, or a top_p below fp32's smallest number, is
    the limit of sampling: the greedy continuation (both were 500s: nan probabilities, an empty nucleus)."""
    greedy = complete(client, model="a", prompt="Ann", max_tokens=8)["choices"][0]["text"]
    for extreme in ({"temperature": 1e-300}, {"temperature": 5e-324}, {"top_p": 1e-320}, {"top_p": 1e-45}):
        got = complete(client, model="a", prompt="Ann", max_tokens=8, seed=3, **{"temperature": 1.0, **extreme})
        assert got["choices"][0]["text"] == greedy, extreme
    assert complete(client, model="a", prompt="Ann", max_tokens=2, seed=2**63 - 1, n=8, temperature=1.0)


def test_a_client_that_leaves_is_dropped_from_the_batch(server, monkeypatch):
    """Deterministic, whatever the speed: once a row has streamed text, the batcher takes no further step until
    the server has seen the hang-up (the row is cancelled), so the row cannot finish first. The bounds are only
    for a failing server (never noticing), not for speed."""
    url, srv = server
    before = srv.batcher.dropped
    step = srv.batcher._step

    def held_step():
        rows = list(srv.batcher.running.rows)
        for _ in range(6000):  # at most 60 s: then the row goes on to its limit and the test fails
            if not any(g.text and not g.cancelled for g in rows):
                break
            time.sleep(0.01)
        step()

    monkeypatch.setattr(srv.batcher, "_step", held_step)
    body = {"model": srv.model_id, "prompt": "Ann", "max_tokens": 200, "temperature": 1.0, "seed": 1,
            "stream": True}  # (this seed draws no EOS before its first text)
    with httpx.Client(base_url=url, timeout=60) as c, c.stream("POST", "/v1/completions", json=body) as r:
        for _ in r.iter_lines():
            break  # read the first event, then hang up
    for _ in range(6000):
        if srv.batcher.dropped != before:
            break
        time.sleep(0.01)
    assert srv.batcher.dropped == before + 1


# ---- memories and jobs -----------------------------------------------------------------------------------
def test_upload_use_delete(client, files):
    assert upload(client, files["a"], "temp").status_code == 201
    info = client.get("/v1/memories/temp").json()
    assert info["width"] == 4 and info["base_model"]
    assert complete(client, model="temp", prompt="Hi")["choices"][0]["text"] == \
        complete(client, model="a", prompt="Hi")["choices"][0]["text"]
    raw = client.post("/v1/memories?id=temp2", content=files["b"].read_bytes(),
                      headers={"content-type": "application/octet-stream"})
    assert raw.status_code == 201 and raw.json()["width"] == 8
    for memory_id in ("temp", "temp2"):
        assert client.delete(f"/v1/memories/{memory_id}").json()["deleted"] is True
        assert client.post("/v1/completions", json={"model": memory_id, "prompt": "Hi"}).status_code == 404
    assert "temp" not in [m["id"] for m in client.get("/v1/memories").json()["data"]]


def test_job_makes_the_memory_memorize_makes_while_serving(server, client, lm, monkeypatch):
    """Deterministic, whatever the speed: after its first two progress updates below 1 the job waits until the
    test has polled once more (a lock step), so the test sees the progress move while it is served."""
    from locas import load_memory
    from locas.learn.config import TrainConfig
    from locas.learn.memorize import memorize_text

    polled, held = threading.Event(), []
    update = server[1].jobs._update

    def lock_step(owner, job_id, persist=True, **changes):
        update(owner, job_id, persist=persist, **changes)
        if 0 < changes.get("progress", 1.0) < 1.0 and len(held) < 2:
            held.append(changes["progress"])
            polled.clear()
            polled.wait(60)  # only a test that stopped polling waits this long

    monkeypatch.setattr(server[1].jobs, "_update", lock_step)
    released = threading.Event()  # the job's freed training memory handed back to the system after it
    monkeypatch.setattr("locas.serve.jobs.release_free_memory", released.set)
    text = "Ann adopted a cat named Tom in May. Bob bought a red bike from Carl. Tom likes fish. " * 40
    settings = {"window_size": 48, "memory_width": 6, "epochs": 2, "lr": 0.05}
    r = client.post("/v1/memories", json={"text": text, "id": "notes", "settings": settings})
    assert r.status_code == 202, r.text
    job = r.json()
    seen, served = [], 0
    while job["state"] in ("queued", "running"):
        assert complete(client, model="a", prompt="Hi", max_tokens=2)  # the server answers while a job trains
        served += 1
        job = client.get(f"/v1/jobs/{job['id']}").json()
        seen.append(job["progress"])
        polled.set()
    assert job["state"] == "succeeded", job
    assert released.wait(30)
    assert job["tokens_done"] == job["tokens_total"] > 0 and job["progress"] == 1.0
    assert served >= 2 and len(set(seen)) >= 2  # progress moved while we watched
    got = load_memory(server[1].store._path("public", "notes"), model=lm)
    want = memorize_text(copy.deepcopy(lm), text, TrainConfig(objective="ntp", **settings), progress=False)
    torch.testing.assert_close(got, want.learner.full_memory(), rtol=0, atol=0)  # the code of `locas memorize`
    # the learning curve: each window's perplexity before it was learned, as `locas memorize` scored it
    streamed = want.streamed
    assert job["curve"]["tokens"] == list(itertools.accumulate(streamed.window_tokens))
    expect = [math.exp(nll / n) for nll, n in zip(streamed.window_nll, streamed.window_tokens)]
    assert job["curve"]["ppl"] == pytest.approx(expect, rel=1e-4)
    assert len(expect) == 2 * len(window_spans(job["tokens_total"], 48))  # two passes
    assert complete(client, model="notes", prompt="Ann adopted")["choices"][0]["text"]
    assert client.delete("/v1/memories/notes").status_code == 200


def test_a_job_preset_sets_its_fields_and_settings_still_win():
    from locas.learn.presets import preset_settings
    from locas.serve.protocol import MemoryJobRequest

    cfg = MemoryJobRequest(text="Ann.", preset="sqrt-tail", settings={"lr": 0.2}).train_config(1024)
    tuned = preset_settings("sqrt-tail")
    assert (cfg.tau_law, cfg.steps_per_window, cfg.extra_step_tokens) == (
        tuned["tau_law"], tuned["steps_per_window"], tuned["extra_step_tokens"]) == ("sqrt", 2, 256)
    assert cfg.lr == 0.2  # the request's own setting beats the preset's 1e-2
    assert MemoryJobRequest(text="Ann.").train_config(1024).tau_law == "r"
    on_gemma = MemoryJobRequest(text="Ann.", preset="paper").train_config(1024, "gemma3-270m")
    assert on_gemma.lr == preset_settings("paper", "gemma3-270m")["lr"] == 1e-2  # the server's model's own lr
    assert MemoryJobRequest(text="Ann.").train_config(1024, "gemma3-270m").lr == 1e-2  # ntp by default
    assert MemoryJobRequest(text="Ann.", settings={"lr": 0.2}).train_config(1024, "gemma3-270m").lr == 0.2


def test_a_selfstudy_job_takes_a_recall_preset_and_trains_as_memorize_does(server, client, lm):
    """`strong` on the server is `locas memorize --preset strong`: its silence term reaches the job (the record says
    so) and the job's memory is the one memorize_text makes with the same settings."""
    from locas import load_memory
    from locas.learn.config import TrainConfig
    from locas.learn.memorize import memorize_text, objective_defaults
    from locas.learn.objectives import ObjectiveSettings, SelfStudyConfig
    from locas.learn.presets import preset_settings

    text = "Ann adopted a cat named Tom in May. Bob bought a red bike from Carl. Tom likes fish."
    settings = {"memory_width": 6, "epochs": 1, "silence_tokens": 128}
    r = client.post("/v1/memories", json={"text": text, "id": "strong-notes", "objective": "selfstudy",
                                          "preset": "strong", "settings": settings})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["study"]["silence_weight"] == preset_settings("strong")["silence_weight"] > 0  # the preset's
    assert job["study"]["silence_tokens"] == 128  # the request's own setting wins
    assert job["config"]["tau_scale"] == preset_settings("strong")["tau_scale"] and job["config"]["epochs"] == 1
    while job["state"] in ("queued", "running"):
        time.sleep(0.2)
        job = client.get(f"/v1/jobs/{job['id']}").json()
    assert job["state"] == "succeeded", job
    fields = {**preset_settings("strong"), **settings}
    study = {k: fields.pop(k) for k in ("silence_weight", "silence_tokens")}
    cfg = TrainConfig(objective="selfstudy", **{**objective_defaults("selfstudy"), **fields})
    want = memorize_text(copy.deepcopy(lm), text, cfg, ObjectiveSettings(selfstudy=SelfStudyConfig(**study)),
                         progress=False)
    got = load_memory(server[1].store._path("public", "strong-notes"), model=lm)
    torch.testing.assert_close(got, want.learner.full_memory(), rtol=0, atol=0)
    assert "strong" in client.get("/v1/server").json()["presets"]
    assert client.delete("/v1/memories/strong-notes").status_code == 200


@pytest.mark.parametrize("arch", ["served", "llama", "gpt2"])
def test_bfloat16_serving_copies_move_the_logits_a_little_of_what_the_memory_moves(lm, arch):
    """`--memory-dtype bfloat16` is not exact, and not far off: the largest logit difference from float32 copies was
    at most 3.1 % of the memory's own largest effect on these models (3 memories each), so 10 % is the bound. Float32
    copies give what the memory gives (the tensor path)."""
    from conftest import tiny_lm
    from locas.core.memory import ServingMemory, batch_serving

    model = lm if arch == "served" else tiny_lm(arch)
    for seed in (2, 3, 4):
        mem = random_memory(model, width=8, seed=seed)
        ids = torch.randint(3, 60, (2, 24), generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            with model.disabled():
                base = model.model(input_ids=ids).logits
            want = model(ids, memory=mem).logits
            got = {}
            for dtype in (torch.float32, torch.bfloat16):
                ready = ServingMemory.of(mem, dtype)
                assert all(c.dtype == dtype for c in ready.channels) and mem.dtype == torch.float32
                model.set_memory_channels(batch_serving([ready, None]))  # row 1: the base model, exactly
                got[dtype] = model.model(input_ids=ids).logits
                model.set_memory_channels(None)
        torch.testing.assert_close(got[torch.float32][:1], want[:1], rtol=0, atol=1e-5)
        torch.testing.assert_close(got[torch.bfloat16][1:], base[1:], rtol=0, atol=1e-5)
        diff = (got[torch.bfloat16][:1] - want[:1]).abs().max().item()
        effect = (want[:1] - base[:1]).abs().max().item()
        assert 0 < diff <= 0.1 * effect, (diff, effect)  # rounded (so not float32), and by little


def test_a_server_serves_bfloat16_copies_of_its_float32_files(lm, files, tmp_path):
    from locas import load_memory

    srv = Server(lm, tmp_path, memory_dtype=torch.bfloat16)
    with serving(srv) as url, httpx.Client(base_url=url, timeout=60) as c:
        assert upload(c, files["a"], "a").status_code == 201 and upload(c, files["b"], "b").status_code == 201
        assert all(ch.dtype == torch.bfloat16 for ch in srv.store.get("public", "a").channels)
        assert load_memory(srv.store._path("public", "a"), model=lm).dtype == torch.float32  # the file: float32
        for memory in ("a", ["a", "b"]):  # one memory, and two stacked
            r = c.post("/v1/completions", json={"model": srv.model_id, "memory": memory, "prompt": "Ann",
                                                "max_tokens": 4})
            assert r.status_code == 200 and r.json()["choices"][0]["text"], r.text


def test_a_jobs_default_width_fits_a_narrow_model(lm):
    """Left unset, memory_width (64) is the FFN width of a model narrower than that; set, it is checked."""
    from locas.serve.protocol import ApiError, MemoryJobRequest

    assert lm.intermediate_size < 64
    assert MemoryJobRequest(text="Ann.").train_config(lm.intermediate_size).memory_width == lm.intermediate_size
    assert MemoryJobRequest(text="Ann.").train_config(1024).memory_width == 64
    with pytest.raises(ApiError, match="settings.memory_width: at most the model's FFN width"):
        MemoryJobRequest(text="Ann.", settings={"memory_width": 64}).train_config(lm.intermediate_size)


def test_the_server_describes_itself_for_the_playground(client, server, lm):
    info = client.get("/v1/server").json()
    assert info["model"] == server[1].model_id and info["context_length"] == lm.max_length
    assert info["chat_template"] is True and info["api_keys"] is False and "ntp" in info["objectives"]
    page = client.get("/")
    assert page.status_code == 200 and "<title>locas playground</title>" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    for name in ("playground.js", "playground.css", "favicon.svg"):
        assert client.get(f"/static/{name}").status_code == 200
    assert client.get("/static/%2e%2e/app.py").status_code == 404  # no way out of the static folder


def test_restart_keeps_memories_and_fails_interrupted_jobs(lm, files, tmp_path):
    srv = Server(lm, tmp_path, load_job_model=lambda: copy.deepcopy(lm))
    with serving(srv) as url, httpx.Client(base_url=url, timeout=60) as c:
        assert upload(c, files["a"], "kept").status_code == 201
        before = complete(c, model="kept", prompt="Ann")["choices"][0]["text"]
    record = {"id": "job-cut", "object": "job", "memory": "half", "state": "running", "progress": 0.4}
    (tmp_path / ".jobs" / "public").mkdir(parents=True, exist_ok=True)
    (tmp_path / ".jobs" / "public" / "job-cut.json").write_text(json.dumps(record))  # as a kill leaves it
    with serving(Server(lm, tmp_path)) as url, httpx.Client(base_url=url, timeout=60) as c:
        assert [m["id"] for m in c.get("/v1/memories").json()["data"]] == ["kept"]
        assert complete(c, model="kept", prompt="Ann")["choices"][0]["text"] == before
        job = c.get("/v1/jobs/job-cut").json()
        assert job["state"] == "failed" and "restart" in job["error"]
        assert c.get("/v1/memories/half").status_code == 404  # never half-written
    assert not list(tmp_path.rglob("*.tmp"))


# ---- isolation -------------------------------------------------------------------------------------------
def test_keys_isolate_memories_and_jobs(lm, files, tmp_path):
    gate = threading.Event()  # the job worker waits for it (loading its model), so a job stays queued or running

    def job_model():
        gate.wait(timeout=60)
        return copy.deepcopy(lm)

    srv = Server(lm, tmp_path, keys=ApiKeys(["key-a", "key-b"]), max_memories=2, max_jobs=1, load_job_model=job_model)
    with serving(srv) as url, httpx.Client(base_url=url, timeout=60) as c:
        a, b = {"Authorization": "Bearer key-a"}, {"Authorization": "Bearer key-b"}
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/memories", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.post("/v1/completions", json={"model": srv.model_id, "prompt": "Hi"}).json()["error"]["code"] == \
            "invalid_api_key"
        assert upload(c, files["a"], "mine", key="key-a").status_code == 201
        assert [m["id"] for m in c.get("/v1/memories", headers=a).json()["data"]] == ["mine"]
        assert c.get("/v1/memories/mine/content", headers=a).content == files["a"].read_bytes()  # a download
        assert c.get("/v1/memories", headers=b).json()["data"] == []
        assert "mine" not in [m["id"] for m in c.get("/v1/models", headers=b).json()["data"]]
        for method, path, body in [("GET", "/v1/memories/mine", None), ("GET", "/v1/memories/mine/content", None),
                                   ("DELETE", "/v1/memories/mine", None),
                                   ("POST", "/v1/completions", {"model": "mine", "prompt": "Hi"}),
                                   ("POST", "/v1/completions", {"model": srv.model_id, "memory": "mine",
                                                                "prompt": "Hi"})]:
            r = c.request(method, path, json=body, headers=b)
            assert r.status_code == 404, (method, path, r.text)
        assert upload(c, files["a"], "mine", key="key-b").status_code == 201  # B's own "mine" is another memory
        job = c.post("/v1/memories", json={"text": "Ann adopted a cat named Tom. " * 4, "settings":
                                           {"window_size": 16, "memory_width": 4}}, headers=a).json()
        assert c.get(f"/v1/jobs/{job['id']}", headers=b).status_code == 404
        assert c.get("/v1/jobs", headers=b).json()["data"] == []
        busy = c.post("/v1/memories", headers=b, json={"text": "More text here.",
                                                        "settings": {"memory_width": 4, "window_size": 16}})
        assert busy.status_code == 429 and busy.json()["error"]["code"] == "too_many_jobs"
        gate.set()
        while c.get(f"/v1/jobs/{job['id']}", headers=a).json()["state"] in ("queued", "running"):
            time.sleep(0.1)
        full = upload(c, files["b"], "third", key="key-a")  # "mine" and the job's memory: A's limit of 2
        assert full.status_code == 429 and "limit" in full.json()["error"]["message"]
        assert c.delete("/v1/memories/mine", headers=a).status_code == 200
        survived = c.post("/v1/completions", json={"model": "mine", "prompt": "Hi", "max_tokens": 2}, headers=b)
        assert survived.status_code == 200  # B's memory survived A's delete
    owners = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert len(owners) == 2 and all(o.startswith("k-") for o in owners)  # keys never reach the disk
    assert not any("key-a" in p.read_text(errors="ignore") for p in tmp_path.rglob("*.json"))


# ---- bad input -------------------------------------------------------------------------------------------
BAD = [  # (method, path, body or raw bytes, content type, status, code or a word of the message)
    ("POST", "/v1/completions", b"{not json", "application/json", 400, "not valid JSON"),
    ("POST", "/v1/completions", b"[1, 2]", "application/json", 400, "JSON object"),
    ("POST", "/v1/completions", {"model": "a", "prompt": "Hi", "bogus": 1}, None, 400, "unknown field"),
    ("POST", "/v1/completions", {"prompt": "Hi"}, None, 400, "model"),
    ("POST", "/v1/completions", {"model": "a", "prompt": "Hi", "max_tokens": "many"}, None, 400, "max_tokens"),
    ("POST", "/v1/completions", {"model": "a", "prompt": "Hi", "max_tokens": 0}, None, 400, "max_tokens"),
    ("POST", "/v1/completions", {"model": "a", "prompt": "Hi", "temperature": -1}, None, 400, "temperature"),
    ("POST", "/v1/completions", {"model": "a", "prompt": "Hi", "n": 0}, None, 400, "n"),
    ("POST", "/v1/completions", {"model": "a", "prompt": "Hi", "stop": ["1", "2", "3", "4", "5"]}, None, 400,
     "stop: List should have at most 4 items"),
    ("POST", "/v1/completions", {"model": "a", "prompt": "Hi", "stop": ""}, None, 400, "stop: String should have at"),
    ("POST", "/v1/completions", {"model": "a", "prompt": "Hi", "stop": ["x", ""]}, None, 400, "stop.1: String should"),
    ("POST", "/v1/completions", {"model": "a", "prompt": ""}, None, 400, "prompt: String should have at least 1"),
    ("POST", "/v1/completions", {"model": "a", "prompt": ["Hi", ""]}, None, 400, "prompt.1: String should have at"),
    ("POST", "/v1/completions", {"model": "a", "prompt": []}, None, 400, "prompt: List should have at least 1 item"),
    ("POST", "/v1/completions", {"model": "a", "prompt": "Hi", "seed": 2**63}, None, 400, "seed: Input should be less"),
    ("POST", "/v1/completions", {"model": "a", "prompt": ["Hi"] * 3, "n": 3, "max_tokens": 1}, None, 400,
     "9 completions (prompts x n); this server takes at most 8"),  # never admitted (--max-queue): not a 503
    ("POST", "/v1/completions", {"model": "a", "prompt": "Hi", "max_tokens": 300}, None, 400,
     "context_length_exceeded"),
    ("POST", "/v1/completions", {"model": "a", "prompt": "x" * 300}, None, 400, "context_length_exceeded"),
    ("POST", "/v1/completions", {"model": "nope", "prompt": "Hi"}, None, 404, "model_not_found"),
    ("POST", "/v1/completions", {"model": "a", "memory": "nope", "prompt": "Hi"}, None, 404, "model_not_found"),
    ("POST", "/v1/completions", {"model": "MODEL", "memory": ["a", "nope"], "prompt": "Hi"}, None, 404,
     "memory_not_found"),
    ("POST", "/v1/completions", {"model": "MODEL", "memory": "../../etc/passwd", "prompt": "Hi"}, None, 404,
     "memory_not_found"),
    ("POST", "/v1/completions", {"model": "MODEL", "memory": ["a"] * 17, "prompt": "Hi"}, None, 400, "at most 16"),
    ("POST", "/v1/completions", {"model": "a", "prompt": "Hi" * 40000}, None, 413, "request_too_large"),
    ("POST", "/v1/chat/completions", {"model": "a", "messages": []}, None, 400, "messages"),
    ("POST", "/v1/chat/completions", {"model": "a", "messages": [{"role": "robot", "content": "x"}]}, None, 400,
     "role"),
    ("POST", "/v1/chat/completions", {"model": "a", "messages": "Hi"}, None, 400, "messages"),
    ("GET", "/v1/memories/nope", None, None, 404, "memory_not_found"),
    ("GET", "/v1/memories/..%2F..%2Fetc", None, None, 404, None),
    ("DELETE", "/v1/memories/nope", None, None, 404, "memory_not_found"),
    ("GET", "/v1/jobs/nope", None, None, 404, "job_not_found"),
    ("GET", "/v1/nothing-here", None, None, 404, None),
    ("PUT", "/v1/completions", {}, None, 405, None),
    ("POST", "/v1/memories", b"some text", "text/plain", 400, "memory file"),
    ("POST", "/v1/memories", {"text": ""}, None, 400, "text"),
    ("POST", "/v1/memories", {"text": "Ann.", "objective": "nope"}, None, 400, "objective"),
    ("POST", "/v1/memories", {"text": "Ann.", "settings": {"colour": 1}}, None, 400, "unknown setting"),
    ("POST", "/v1/memories", {"text": "Ann.", "preset": "fast"}, None, 400, "unknown preset"),
    ("POST", "/v1/memories", {"text": "Ann.", "settings": {"lr": "fast"}}, None, 400, "expected float"),
    ("POST", "/v1/memories", {"text": "Ann.", "preset": "strong"}, None, 400, "recall preset of the selfstudy"),
    ("POST", "/v1/memories", {"text": "Ann.", "settings": {"silence_weight": 1.0}}, None, 400,
     "settings.silence_weight: a setting of the selfstudy objective"),
    ("POST", "/v1/memories", {"text": "Ann.", "objective": "selfstudy", "settings": {"silence_weight": -1.0}}, None,
     400, "settings.silence_weight"),
    ("POST", "/v1/memories", {"text": "Ann.", "objective": "selfstudy", "settings": {"loss": "nope"}}, None, 400,
     "settings.loss must be one of"),
    ("POST", "/v1/memories", {"text": "Ann.", "settings": {"lr": -1.0}}, None, 400, "settings.lr"),
    ("POST", "/v1/memories", {"text": "Ann.", "settings": {"memory_width": 9999}}, None, 400, "FFN width"),
    ("POST", "/v1/memories", {"text": "Ann.", "settings": {"window_size": 4096, "memory_width": 4}}, None, 400,
     "model's context"),
    ("POST", "/v1/memories", {"text": "Ann.", "id": "../x"}, None, 400, "id: bad memory id '../x': use 1-64"),
    ("POST", "/v1/memories", {"text": "Ann.", "id": "x\n"}, None, 400, "bad memory id 'x\\n'"),
    ("POST", "/v1/memories?id=x%0A", b"\x00" * 8, "application/octet-stream", 400, "bad memory id 'x\\n'"),
    ("POST", "/v1/memories?id=..%2Fx", {"text": "Ann."}, None, 400, "bad memory id"),  # checked whatever the body
    ("POST", "/v1/memories?id=", b"\x00" * 8, "application/octet-stream", 400, "bad memory id"),
    ("POST", "/v1/memories", {"text": "Ann.", "id": "a"}, None, 409, "memory_exists"),
]


@pytest.mark.parametrize("method,path,body,ctype,status,expect", BAD, ids=[f"{b[0]} {b[1]} {b[5]}" for b in BAD])
def test_bad_request_gets_an_openai_error_and_the_server_survives(server, client, method, path, body, ctype, status,
                                                                 expect):
    if isinstance(body, dict) and body.get("model") == "MODEL":
        body = {**body, "model": server[1].model_id}
    if isinstance(body, bytes):
        r = client.request(method, path, content=body, headers={"content-type": ctype})
    else:
        r = client.request(method, path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert "Traceback" not in r.text and "File \"" not in r.text
    if status == 405:  # RFC 9110: a 405 names the methods the path takes
        assert r.headers["allow"] == "POST"
    if expect:
        assert expect in (error["code"] or "") or expect in error["message"], error
    assert client.get("/health").json()["status"] == "ok"


def test_a_405_names_every_method_of_the_path(client):
    """Starlette's 405 names the methods of the first route matching the path; a path with two routes (a GET and a
    POST, a GET and a DELETE) has both in ``Allow``."""
    for method, path, allow in [("OPTIONS", "/v1/memories", "GET, POST"), ("PUT", "/v1/memories/a", "DELETE, GET"),
                                ("PATCH", "/v1/memories/a/content", "GET"), ("DELETE", "/health", "GET")]:
        r = client.request(method, path)
        assert r.status_code == 405 and r.headers["allow"] == allow, (method, path, r.headers.get("allow"))
        assert r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("name,message", [("corrupt", "not a readable memory file"), ("other", "made for"),
                                          ("junk", "not a readable memory file")])
def test_bad_uploads_are_refused_with_the_reason(client, files, tmp_path, name, message):
    path = files.get(name) or tmp_path / "junk.locas"
    if name == "junk":
        path.write_bytes(b"\x00" * 100)
    r = upload(client, path, f"bad-{name}")
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text
    assert str(tmp_path) not in r.text and ".upload." not in r.text  # no server paths in the answer
    assert client.get(f"/v1/memories/bad-{name}").status_code == 404
    assert complete(client, model="a", prompt="Hi", max_tokens=2)


# ---- the schema ---------------------------------------------------------------------------------------------
def test_every_answer_matches_the_documented_schema(server, client, files):
    """Real answers of every endpoint validate against the models /openapi.json documents (unknown fields
    refused), each status seen is documented for its route, and every POST documents its request body."""
    from locas.serve import protocol as P

    schema = client.get("/openapi.json").json()
    seen = []

    def check(method, path, route, model, status, **kw):
        r = client.request(method, path, **kw)
        assert r.status_code == status, (path, r.text)
        model.model_validate(r.json())
        seen.append((method.lower(), route, str(status)))
        return r.json()

    model_id = server[1].model_id
    check("GET", "/health", "/health", P.Health, 200)
    check("GET", "/v1/server", "/v1/server", P.ServerInfo, 200)
    check("GET", "/v1/models", "/v1/models", P.ModelList, 200)
    check("POST", "/v1/completions", "/v1/completions", P.Completion, 200,
          json={"model": "a", "prompt": "Hi", "max_tokens": 2})
    check("POST", "/v1/chat/completions", "/v1/chat/completions", P.ChatCompletion, 200,
          json={"model": model_id, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    for path, chunk, body in [("/v1/completions", P.CompletionChunk, {"prompt": "Hi"}),
                              ("/v1/chat/completions", P.ChatCompletionChunk,
                               {"messages": [{"role": "user", "content": "Hi"}]})]:  # streamed: one chunk an event
        with client.stream("POST", path, json={"model": "a", "max_tokens": 3, "n": 2, "stream": True, **body}) as r:
            events = [line.removeprefix("data: ") for line in r.iter_lines() if line]
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert events[-1] == "[DONE]" and len(events) > 3
        for event in events[:-1]:
            chunk.model_validate_json(event)
        assert "text/event-stream" in schema["paths"][path]["post"]["responses"]["200"]["content"]
    check("POST", "/v1/completions", "/v1/completions", P.ErrorResponse, 404, json={"model": "nope", "prompt": "Hi"})
    check("POST", "/v1/completions", "/v1/completions", P.ErrorResponse, 400, json={"model": model_id})
    check("GET", "/v1/memories", "/v1/memories", P.MemoryList, 200)
    check("GET", "/v1/memories/a", "/v1/memories/{memory_id}", P.MemoryInfo, 200)
    check("GET", "/v1/memories/zz", "/v1/memories/{memory_id}", P.ErrorResponse, 404)
    check("POST", "/v1/memories", "/v1/memories", P.MemoryInfo, 201,
          files={"file": ("s.locas", files["b"].read_bytes())}, data={"id": "schema-up"})
    job = check("POST", "/v1/memories", "/v1/memories", P.Job, 202,
                json={"text": "Ann adopted a cat. " * 8, "id": "schema-job",
                      "settings": {"memory_width": 4, "window_size": 64}})
    while check("GET", f"/v1/jobs/{job['id']}", "/v1/jobs/{job_id}", P.Job, 200)["state"] in ("queued", "running"):
        time.sleep(0.05)
    done = check("GET", f"/v1/jobs/{job['id']}", "/v1/jobs/{job_id}", P.Job, 200)
    assert done["state"] == "succeeded" and done["curve"]["ppl"], done["error"]
    check("GET", "/v1/jobs", "/v1/jobs", P.JobList, 200)
    for memory_id in ("schema-up", "schema-job"):
        check("DELETE", f"/v1/memories/{memory_id}", "/v1/memories/{memory_id}", P.MemoryDeleted, 200)
    for method, route, status in seen:
        assert status in schema["paths"][route][method]["responses"], (method, route, status)
    for route, methods in schema["paths"].items():
        if "post" in methods:
            assert methods["post"]["requestBody"]["content"], route
    assert schema["components"]["schemas"]["CompletionRequest"]["additionalProperties"] is False


def test_the_schema_states_the_static_limits_and_links_a_memorys_life(client):
    """What the schema can state it states (so a fuzzer's schema-valid request is not refused for it), and its links
    chain the operations a memory goes through: made (an upload, or a job to follow), read, used, deleted."""
    schema = client.get("/openapi.json").json()
    parts = schema["components"]["schemas"]
    prompt = {tuple(sorted(branch)): branch for branch in parts["CompletionRequest"]["properties"]["prompt"]["anyOf"]}
    assert prompt[("minLength", "type")] == {"type": "string", "minLength": 1}
    assert prompt[("items", "minItems", "type")] == {"type": "array", "items": {"type": "string", "minLength": 1},
                                                     "minItems": 1}
    stop = parts["CompletionRequest"]["properties"]["stop"]["anyOf"]
    assert {"type": "string", "minLength": 1} in stop and any(b.get("maxItems") == 4 for b in stop)
    assert parts["ChatRequest"]["properties"]["seed"]["anyOf"][0]["maximum"] == 2**63 - 1
    create = schema["paths"]["/v1/memories"]["post"]
    assert parts["MemoryJobRequest"]["properties"]["id"]["anyOf"][0]["pattern"] == \
        create["parameters"][0]["schema"]["pattern"] == "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
    operations = {op["operationId"]: op for path in schema["paths"].values() for op in path.values()}

    def links(op, status):
        found = operations[op]["responses"][status]["links"]
        assert all(link["operationId"] in operations for link in found.values())
        return {link["operationId"]: link.get("parameters") or link.get("requestBody") for link in found.values()}

    made = links("createMemory", "201")  # an uploaded memory: its id in the answer
    assert made == {"getMemory": {"memory_id": "$response.body#/id"},
                    "downloadMemory": {"memory_id": "$response.body#/id"},
                    "createCompletion": {"model": "$response.body#/id"},
                    "createChatCompletion": {"model": "$response.body#/id"},
                    "deleteMemory": {"memory_id": "$response.body#/id"}}
    assert links("createMemory", "202") == {"getJob": {"job_id": "$response.body#/id"}}  # a job: follow it, then
    assert links("getJob", "200") == {"getJob": {"job_id": "$response.body#/id"},  # its memory, once it succeeded
                                      **{op: {k: "$response.body#/memory"} for op, v in made.items() for k in v}}
    assert links("listModels", "200") == {"createCompletion": {"model": "$response.body#/data/0/id"},
                                          "createChatCompletion": {"model": "$response.body#/data/0/id"}}


# ---- overload and stopping --------------------------------------------------------------------------------
def _held(srv: Server) -> threading.Event:
    """Make the batcher wait at every decoding step until the returned event is set (rows stay running or queued
    for as long as a test needs, whatever the machine's speed)."""
    gate = threading.Event()
    step = srv.batcher._step

    def held():
        gate.wait(60)  # only a broken test waits this long
        step()

    srv.batcher._step = held
    return gate


def _wait_health(client: httpx.Client, **want) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        health = client.get("/health").json()
        if all(health[k] == v for k, v in want.items()):
            return health
        time.sleep(0.02)
    raise AssertionError(f"the server never reached {want}: {health}")


def _post_in_thread(url: str, results: dict, name: str, **body) -> threading.Thread:
    def run():
        with httpx.Client(base_url=url, timeout=60) as c:
            r = c.post("/v1/completions", json={"max_tokens": 4, "temperature": 0, "prompt": "Hi", **body})
            results[name] = (r.status_code, r.text)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _stream_in_thread(url: str, events: list, **body) -> threading.Thread:
    """A streamed completion read in a thread; its non-empty SSE lines go to ``events``."""
    def run():
        request = {"prompt": "Hi", "temperature": 0, "stream": True, "ignore_eos": True, **body}
        with httpx.Client(base_url=url, timeout=60) as s, s.stream("POST", "/v1/completions", json=request) as r:
            events.extend(line for line in r.iter_lines() if line)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_full_queue_sheds_with_503_and_retry_after_then_recovers(lm, tmp_path):
    srv = Server(lm, tmp_path, max_batch=1, max_queue=1, max_wait_ms=0)
    gate = _held(srv)
    with serving(srv) as url, httpx.Client(base_url=url, timeout=60) as c:
        results: dict = {}
        first = _post_in_thread(url, results, "running", model=srv.model_id)
        _wait_health(c, running=1)
        second = _post_in_thread(url, results, "queued", model=srv.model_id)
        health = _wait_health(c, running=1, queued=1)
        assert health["max_queue"] == 1
        for stream in (False, True):  # a stream is refused before it starts, not broken half-way
            r = c.post("/v1/completions", json={"model": srv.model_id, "prompt": "Hi", "stream": stream})
            assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
            assert r.json()["error"]["code"] == "server_overloaded" and "busy" in r.json()["error"]["message"]
        gate.set()
        first.join(60)
        second.join(60)
        assert results["running"][0] == 200 and results["queued"][0] == 200  # what was admitted is answered
        assert complete(c, model=srv.model_id, prompt="Hi", max_tokens=2)  # and the load gone, it serves again
        assert c.get("/health").json()["queued"] == 0


@contextlib.contextmanager
def _held_stream(lm, tmp_path, max_tokens: int):
    """A server whose batcher is held (``_held``) with one streamed completion running in it; yields (server,
    gate, client, the stream's events, the stream's reader thread)."""
    srv = Server(lm, tmp_path, max_batch=4, max_wait_ms=0)
    gate = _held(srv)
    with serving(srv) as url, httpx.Client(base_url=url, timeout=60) as c:
        events: list = []
        reader = _stream_in_thread(url, events, model=srv.model_id, max_tokens=max_tokens)
        _wait_health(c, running=1)
        yield srv, gate, c, events, reader


def test_drain_refuses_new_requests_and_lets_running_streams_finish(lm, tmp_path):
    with _held_stream(lm, tmp_path, max_tokens=5) as (srv, gate, c, events, reader):
        drained: dict = {}
        drainer = threading.Thread(target=lambda: drained.update(ok=srv.drain(30)))
        drainer.start()
        while not srv.draining.is_set():
            time.sleep(0.01)
        r = c.post("/v1/completions", json={"model": srv.model_id, "prompt": "Hi"})
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert r.json()["error"]["code"] == "server_shutting_down"
        assert c.get("/health").json()["status"] == "draining"  # health still answers, and says so
        gate.set()
        drainer.join(60)
        reader.join(60)
    assert drained == {"ok": True}
    assert events[-1] == "data: [DONE]" and not any('"error"' in e for e in events)
    texts = [json.loads(e[6:])["choices"][0] for e in events[:-1]]
    assert texts[-1]["finish_reason"] == "length" and sum(bool(t["text"]) for t in texts) >= 1


def test_a_drain_that_times_out_ends_the_stream_with_an_error_event(lm, tmp_path):
    with _held_stream(lm, tmp_path, max_tokens=200) as (srv, gate, _client, events, reader):
        assert srv.drain(0.2) is False  # the row cannot finish while held
        closing = threading.Thread(target=srv.batcher.close)
        closing.start()
        gate.set()
        closing.join(60)
        reader.join(60)
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2][6:])["error"]
    assert error["type"] == "server_error" and "the server is stopping" in error["message"]


def test_closing_records_a_running_job_as_interrupted_and_writes_no_memory(lm, tmp_path):
    from locas.learn.config import TrainConfig
    from locas.serve.jobs import Jobs
    from locas.serve.store import MemoryStore

    loading, gate = threading.Event(), threading.Event()

    def job_model():  # the job is running (its model loading) until the test lets it go on
        loading.set()
        gate.wait(60)
        return copy.deepcopy(lm)

    store = MemoryStore(tmp_path, lm)
    jobs = Jobs(store, job_model)
    record = jobs.submit("public", "notes", "Ann adopted a cat named Tom. " * 4, TrainConfig(memory_width=4))
    loading.wait(60)
    assert jobs.get("public", record["id"])["state"] == "running"
    jobs.close()
    stopped = jobs.get("public", record["id"])
    assert stopped["state"] == "failed" and stopped["error"].startswith("interrupted")
    gate.set()  # the worker finishes its training, then sees the server closed
    jobs.thread.join(60)
    assert not jobs.thread.is_alive()
    assert jobs.get("public", record["id"])["state"] == "failed" and not store.exists("public", "notes")
    on_disk = json.loads((tmp_path / ".jobs" / "public" / f"{record['id']}.json").read_text())
    assert on_disk["state"] == "failed"  # a restart finds it failed too


def test_closing_stops_a_running_jobs_training(lm, tmp_path):
    """A job asked to train for an hour stops at its next step once the server closes (its worker would train on,
    after the server has gone, for the whole budget)."""
    from locas.learn.config import TrainConfig
    from locas.serve.jobs import Jobs
    from locas.serve.store import MemoryStore

    store = MemoryStore(tmp_path, lm)
    jobs = Jobs(store, lambda: copy.deepcopy(lm))
    record = jobs.submit("public", "long", "Ann adopted a cat named Tom. " * 4, TrainConfig(memory_width=4,
                                                                                         window_size=32),
                         budget_s=3600.0)
    deadline = time.monotonic() + 60
    while jobs.get("public", record["id"])["steps"] < 1 and time.monotonic() < deadline:  # it is training
        time.sleep(0.01)
    assert jobs.get("public", record["id"])["state"] == "running"
    jobs.close()
    jobs.thread.join(30)
    assert not jobs.thread.is_alive()
    stopped = jobs.get("public", record["id"])
    assert stopped["state"] == "failed" and stopped["error"].startswith("interrupted") and not store.exists(
        "public", "long")


# ---- hostile clients ---------------------------------------------------------------------------------------
def _raw(url: str):
    import socket

    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _closed_by_server(sock, deadline_s: float = 30) -> bool:
    """True once the server has closed ``sock`` (reads end), reading whatever it sent first."""
    sock.settimeout(deadline_s)
    try:
        while sock.recv(65536):
            pass
        return True
    except OSError:
        return False


def test_idle_and_slow_clients_are_cut_off_without_hurting_others(lm, tmp_path):
    srv = Server(lm, tmp_path, limits=Limits(head_timeout_s=0.5, body_timeout_s=0.5))
    with serving(srv) as url, httpx.Client(base_url=url, timeout=60) as c:
        idle = [_raw(url) for _ in range(300)]  # connections that never send a byte
        slow_head = _raw(url)
        slow_head.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # ... and the rest never comes
        slow_body = _raw(url)
        slow_body.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 64\r\n\r\n{")  # one byte of 64, then silence
        assert complete(c, model=srv.model_id, prompt="Hi", max_tokens=2)  # others are served meanwhile
        assert all(_closed_by_server(s) for s in idle)
        assert _closed_by_server(slow_head)
        slow_body.settimeout(30)
        answer = b""
        while b"request_timeout" not in answer:  # the head and the JSON error may come in separate packets
            piece = slow_body.recv(65536)
            assert piece, answer
            answer += piece
        assert answer.startswith(b"HTTP/1.1 408"), answer
        for s in [*idle, slow_head, slow_body]:
            s.close()
        huge = c.get("/health", headers={"X-Junk": "x" * (64 << 10)})  # a 64 KB header
        assert huge.status_code in (400, 431)  # 431 from the app, or 400 when h11 sees it arrive in pieces
        assert complete(c, model=srv.model_id, prompt="Hi", max_tokens=2)


@pytest.mark.parametrize("memory_id", ["../x", "..", "a/b", "%2e%2e", "x" * 65, ".hidden", "a b", "nul\x00", "a\n"])
def test_odd_ids_never_name_a_path(client, memory_id):
    from urllib.parse import quote

    for path in (f"/v1/memories/{quote(memory_id, safe='')}", f"/v1/memories/{quote(memory_id, safe='')}/content",
                 f"/v1/jobs/{quote(memory_id, safe='')}"):
        r = client.get(path)
        assert r.status_code == 404 and "Traceback" not in r.text, (path, r.text)
    r = client.post("/v1/memories", json={"text": "Ann.", "id": memory_id})
    assert r.status_code == 400 and r.json()["error"]["param"] == "id"
    with pytest.raises(LocasError):  # the store's own check, on the whole string (not up to a final line break)
        check_id(memory_id)


def test_a_memory_read_from_disk_does_not_stop_other_requests(server, client, files, monkeypatch):
    """An upload's full check (and a cache miss's load) runs in a worker thread: while one is held, the event loop
    still answers other requests (before, a large upload stalled every stream for its whole check)."""
    url, srv = server
    entered, release = threading.Event(), threading.Event()
    load = srv.store._load

    def held(path):
        entered.set()
        release.wait(timeout=120)
        return load(path)

    monkeypatch.setattr(srv.store, "_load", held)
    answers = {}

    def slow_upload():
        with httpx.Client(base_url=url, timeout=180) as c:
            answers["upload"] = upload(c, files["a"], "held-upload")

    thread = threading.Thread(target=slow_upload)
    thread.start()
    try:
        assert entered.wait(timeout=60)
        assert client.get("/health", timeout=30).json()["status"] == "ok"  # answered while the check is held
        assert "a" in [m["id"] for m in client.get("/v1/memories", timeout=30).json()["data"]]
    finally:
        release.set()
        thread.join(timeout=120)
    assert answers["upload"].status_code == 201
    assert client.delete("/v1/memories/held-upload").status_code == 200


# ---- the command -----------------------------------------------------------------------------------------
def test_locas_serve_command_starts_answers_and_stops(lm, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    model_dir = tmp_path / "model"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    def cmd(memory_dir, port):
        return [sys.executable, "-m", "locas", "serve", "--memory-dir", str(tmp_path / memory_dir), "--model",
                str(model_dir), "--device", "cpu", "--port", str(port), "--threads", "1"]

    proc = subprocess.Popen(cmd("mem", 0), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.split(" on ")[1].split()[0].removesuffix("/v1")
        assert httpx.get(f"{url}/health", timeout=30).json()["status"] == "ok"
        taken = url.rsplit(":", 1)[1]
        for memory_dir, port, message, extra in [("mem2", taken, "choose another --port", []),
                                                 ("mem", 0, "another locas process is running", []),
                                                 ("mem3", 0, "--host 0.0.0.0 without --api-keys",
                                                  ["--host", "0.0.0.0"])]:
            second = subprocess.run(cmd(memory_dir, port) + extra, capture_output=True, text=True, timeout=120)
            lines = second.stderr.strip().splitlines()
            assert second.returncode == 2 and len(lines) == 1 and message in lines[0], second.stderr
        checked = subprocess.run(cmd("mem4", 0) + ["--memory-dtype", "bfloat16", "--check"], capture_output=True,
                                 text=True, timeout=120)
        assert checked.returncode == 0 and "memories served in torch.bfloat16 (not exact)" in checked.stdout, \
            checked.stderr
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0 and "draining" in out and "stopped" in out, err
    assert "Traceback" not in err
