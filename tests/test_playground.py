"""The playground page of `locas serve` in a real headless browser: Debian's Chromium driven by Selenium through
Debian's ChromeDriver. The page is loaded from a server on a tiny character-level chat model, a text is pasted and
memorised by a job, a question is answered three ways, and errors (a bad key, a memory gone, a failed job) show as
messages. Without the browser the tests skip and say how to install it (`.ci/run` does).
"""

from __future__ import annotations

import copy

import httpx
import pytest
import torch

from browser import browser_paths, by_id, chrome, js_errors, message, set_value, wait_for
from conftest import random_memory
from locas import save_memory
from locas.learn.stream import window_spans
from locas.serve.app import Server, serving
from locas.serve.auth import ApiKeys
from locas.text.prompts import DOCUMENT_INSTRUCTION
from test_locomo_support import char_lm

By = pytest.importorskip("selenium.webdriver.common.by", reason="selenium is missing: `make setup` installs it").By

TEXT = ("Ann adopted a grey cat named Pip in May. Bob bought a red bike from Carl in June. "
        "The glassworks on Mill Lane was founded by Dora Pell in 1871. ") * 8  # 1,200 characters: 2 windows
COLUMNS = ("answer-base", "answer-memory", "answer-document")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    *_, why = browser_paths()
    if why:
        pytest.skip(why)
    downloads = tmp_path_factory.mktemp("downloads")
    drv = chrome(downloads=downloads)
    drv.downloads = downloads
    yield drv
    drv.quit()


@pytest.fixture(scope="module")
def lm():
    torch.set_num_threads(1)
    return char_lm(seed=5, chat=True, ffn=96)  # FFN 96: room for the default memory width 64


def open_page(drv, url: str):
    drv.get(url + "/")
    wait_for("say which model it serves", lambda: "tiny-char" in by_id(drv, "server-line").text)


def test_the_page_memorises_a_text_and_answers_with_and_without_the_memory(browser, lm, tmp_path):
    server = Server(lm, tmp_path / "served", load_job_model=lambda: copy.deepcopy(lm))
    strong = tmp_path / "strong.locas"  # a memory that surely changes the answer, to stack on the job's
    save_memory(random_memory(lm, width=8, seed=12, scale=2.0), strong, model=lm)
    with serving(server) as url:
        assert httpx.post(f"{url}/v1/memories", files={"file": ("s.locas", strong.read_bytes())},
                          data={"id": "strong"}).status_code == 201
        open_page(browser, url)
        assert "context 4096 tokens" in by_id(browser, "server-line").text
        set_value(browser, "doc", TEXT)
        assert by_id(browser, "doc-count").text == f"{len(TEXT):,} characters"
        browser.find_element(By.CSS_SELECTOR, "#passes option[value='2']").click()
        by_id(browser, "memorize").click()
        status = by_id(browser, "job-status")
        wait_for("finish the job", lambda: status.get_attribute("data-state") in ("succeeded", "failed"))
        assert status.get_attribute("data-state") == "succeeded", by_id(browser, "job-error").text
        job = httpx.get(f"{url}/v1/jobs").json()["data"][-1]
        assert job["config"]["epochs"] == 2 and job["state"] == "succeeded"
        assert f"memorised as '{job['memory']}'" in status.text
        assert float(by_id(browser, "job-progress").get_attribute("value")) == 1.0
        # the chart: one point per window of both passes, from the job's own curve
        points = len(job["curve"]["ppl"])
        assert points == 2 * len(window_spans(job["tokens_total"], 1024)) == 4  # 2 passes of 2 windows
        assert by_id(browser, "curve").get_attribute("data-points") == str(points)
        assert len(browser.find_elements(By.CSS_SELECTOR, "#curve circle")) == points
        # the memory is listed, with its tokens and width, and chosen for the question
        row = wait_for("list the memory",
                       lambda: browser.find_elements(By.CSS_SELECTOR, f"tr[data-id='{job['memory']}']"))
        cells = [td.text for td in row[0].find_elements(By.TAG_NAME, "td")]
        assert cells[:4] == [job["memory"], str(job["tokens_total"]), "64", "ntp"]
        assert by_id(browser, "memory-a").get_attribute("value") == job["memory"]
        browser.find_element(By.CSS_SELECTOR, "#memory-b option[value='strong']").click()  # stacked

        fetched = []  # which memories the page's requests name, seen where the server loads them
        load = server.store.get
        server.store.get = lambda owner, memory_id: fetched.append(memory_id) or load(owner, memory_id)
        set_value(browser, "question", "Who founded the glassworks?")
        set_value(browser, "max-tokens", "12")
        by_id(browser, "ask").click()
        wait_for("answer three ways", lambda: all(by_id(browser, c).get_attribute("data-state") in ("done", "failed")
                                                  for c in COLUMNS))
        answers = {c: by_id(browser, c).find_element(By.CLASS_NAME, "text").text for c in COLUMNS}
        for c in COLUMNS:
            assert by_id(browser, c).get_attribute("data-state") == "done", by_id(browser, c).text
            assert answers[c].strip(), f"{c} shows no answer"
        assert sorted(fetched) == sorted([job["memory"], "strong"])  # the memory column's request, and no other
        assert len(set(answers.values())) == 3, answers  # three different requests, three different answers
        assert by_id(browser, "answer-memory").find_element(By.TAG_NAME, "h3").text == f"with {job['memory']} + strong"
        # each column shows what the API answers for that request (greedy, so the same tokens)
        question = f"{DOCUMENT_INSTRUCTION}\n\nQuestion: Who founded the glassworks?"
        for column, memory, text in (("answer-base", None, ""), ("answer-memory", [job["memory"], "strong"], ""),
                                     ("answer-document", None, TEXT + "\n\n")):
            body = {"model": "tiny-char", "messages": [{"role": "user", "content": text + question}],
                    "max_tokens": 12, "temperature": 0}
            if memory:
                body["memory"] = memory
            direct = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()
            assert answers[column] == direct["choices"][0]["message"]["content"].strip(), column
        assert js_errors(browser) == []


def test_download_and_delete_from_the_list(browser, lm, tmp_path):
    server = Server(lm, tmp_path / "served", load_job_model=lambda: copy.deepcopy(lm))
    memory_file = tmp_path / "notes.locas"
    save_memory(random_memory(lm, width=4, seed=3), memory_file, model=lm)
    with serving(server) as url:
        for name in ("notes", "gone"):
            assert httpx.post(f"{url}/v1/memories", files={"file": ("m.locas", memory_file.read_bytes())},
                              data={"id": name}).status_code == 201
        open_page(browser, url)
        row = wait_for("list two memories", lambda: len(browser.find_elements(By.CSS_SELECTOR, "#memories tbody tr"))
                       == 2 and browser.find_element(By.CSS_SELECTOR, "tr[data-id='notes']"))
        row.find_element(By.XPATH, ".//button[text()='download']").click()
        saved = wait_for("download the file", lambda: (browser.downloads / "notes.locas").is_file()
                         and (browser.downloads / "notes.locas"))
        wait_for("finish the download", lambda: saved.stat().st_size == memory_file.stat().st_size)
        assert saved.read_bytes() == (server.store.root / "public" / "notes.locas").read_bytes()
        # a memory deleted behind the page's back: the page says so in words (the API's 404)
        assert httpx.delete(f"{url}/v1/memories/gone").status_code == 200
        browser.find_element(By.CSS_SELECTOR, "tr[data-id='gone'] button.delete").click()
        assert wait_for("show the 404", lambda: message(browser)) == "the memory 'gone' does not exist"
        browser.find_element(By.CSS_SELECTOR, "tr[data-id='notes'] button.delete").click()
        wait_for("say it deleted", lambda: message(browser) == "deleted the memory 'notes'")
        assert httpx.get(f"{url}/v1/memories").json()["data"] == []
        wait_for("empty the list", lambda: by_id(browser, "no-memories").get_attribute("hidden") is None)


def test_a_failed_job_shows_its_error_in_words(browser, lm, tmp_path):
    server = Server(lm, tmp_path / "served", load_job_model=lambda: copy.deepcopy(lm))
    with serving(server) as url:
        open_page(browser, url)
        by_id(browser, "memorize").click()  # nothing pasted: refused on the page
        assert wait_for("refuse an empty text", lambda: message(browser)) == "paste a text or choose a file first"
        set_value(browser, "doc", "x")  # one token: the job starts, then fails
        by_id(browser, "memorize").click()
        error = by_id(browser, "job-error")
        wait_for("show the job's error", lambda: error.get_attribute("hidden") is None and error.text)
        assert error.text == "The job failed: the text has 1 token(s); a memory needs a text of at least 2 tokens"
        set_value(browser, "doc", TEXT)
        set_value(browser, "memory-id", "../etc")  # a bad id: the API's 400, in words
        by_id(browser, "memorize").click()
        assert "memory id" in wait_for("refuse the id", lambda: message(browser)).lower()


def test_a_bad_key_is_shown_as_a_message(browser, lm, tmp_path):
    keys = ApiKeys(["sk-good"])
    server = Server(lm, tmp_path / "served", keys=keys, load_job_model=lambda: copy.deepcopy(lm))
    memory_file = tmp_path / "mine.locas"
    save_memory(random_memory(lm, width=4, seed=3), memory_file, model=lm)
    with serving(server) as url:
        assert httpx.post(f"{url}/v1/memories", files={"file": ("m.locas", memory_file.read_bytes())},
                          data={"id": "mine"}, headers={"Authorization": "Bearer sk-good"}).status_code == 201
        open_page(browser, url)
        assert "API key required" in by_id(browser, "server-line").text
        assert wait_for("ask for a key", lambda: message(browser)).startswith("missing API key")
        set_value(browser, "api-key", "sk-wrong")
        by_id(browser, "key-save").click()
        wait_for("refuse the key", lambda: message(browser).startswith("unknown API key"))
        assert "Enter a valid API key" in message(browser)
        assert browser.find_elements(By.CSS_SELECTOR, "tr[data-id='mine']") == []
        set_value(browser, "api-key", "sk-good")
        by_id(browser, "key-save").click()
        wait_for("accept the key", lambda: message(browser) == "key accepted")
        assert browser.find_elements(By.CSS_SELECTOR, "tr[data-id='mine']")
        # the key lives in this tab's session storage, and survives a reload
        assert browser.execute_script("return sessionStorage.getItem('locas-api-key')") == "sk-good"
        open_page(browser, url)
        wait_for("list the memory after a reload", lambda: browser.find_elements(By.CSS_SELECTOR, "tr[data-id='mine']"))
        browser.execute_script("sessionStorage.clear()")
