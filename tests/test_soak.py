"""The short soak: a real `locas serve` process on a tiny model under mixed traffic from the official openai
client, killed and restarted mid-load, then stopped with SIGTERM. Nothing acknowledged may be lost, no answer
may be a surprise, and the probe answers are the same before and after (benchmarks/soak.py is the long run).
"""

from __future__ import annotations

import asyncio

import pytest

from conftest import random_memory
from locas import save_memory
from soak_traffic import ServerProcess, Traffic, audit, probes, summarize, upload_pool, wait_for_jobs
from test_locomo_support import char_lm

PROMPTS = ["Ann adopted a cat", "Bob bought a red bike from Carl and", "Hi", "The weather"]
TEXTS = ["Ann adopted a cat named Tom in May. Bob bought a red bike from Carl in June. " * 3,
         "Dora moved to Lisbon and opened a bakery on the hill. " * 4]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("soak")
    lm = char_lm(seed=5, chat=True, max_positions=256)
    model_dir = root / "model"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    files = {}
    for i in range(8):
        path = root / f"m{i}.locas"
        save_memory(random_memory(lm, width=2 + i % 3, seed=40 + i, scale=2.0), path, model=lm)
        files[f"pool-{i}"] = path.read_bytes()
    return root, model_dir, files, lm


def test_mixed_load_a_kill_and_a_stop_lose_nothing(world):
    root, model_dir, files, _ = world
    server = ServerProcess(["--model", str(model_dir), "--device", "cpu", "--threads", "1"], root / "memories",
                           root / "server.log", extra=["--memory-cache", "3", "--max-batch", "8", "--max-jobs", "2",
                                                       "--drain-timeout", "10"])
    server.start()
    pool = sorted(files)[:6]
    traffic = Traffic(server, pool=pool, files=[files[k] for k in sorted(files)[6:]], texts=TEXTS, prompts=PROMPTS,
                      max_tokens=8, seed=1, job_settings={"epochs": 1, "window_size": 64, "memory_width": 4})
    probe_memories = [None, pool[0], [pool[1], pool[2]]]

    async def scenario():
        await upload_pool(server.url, {k: files[k] for k in pool}, traffic.ledger)
        before = await probes(server.url, PROMPTS, probe_memories)
        for _ in range(2):  # jobs accepted before the kill, whatever the timing of the load
            await traffic.run("job")

        async def kill_midway():
            await asyncio.sleep(6)
            return await traffic.fault("kill")

        until = traffic.now() + 16
        _, kill, _, _ = await asyncio.gather(traffic.open_loop(rate=12, seconds=14), kill_midway(),
                                             traffic.jobs_every(3, until), traffic.sample_every(0.5, until))
        await wait_for_jobs(traffic.http, timeout=60)
        final = await audit(traffic.http, traffic.ledger, jobs_final=True)
        after = await probes(server.url, PROMPTS, probe_memories)
        await traffic.aclose()
        return before, kill, final, after

    try:
        before, kill, final, after = asyncio.run(scenario())
    finally:
        returncode = server.stop()
    summary = summarize(traffic.records)
    assert summary["unexpected"] == 0, summary["unexpected_examples"]
    assert summary["server_errors"] == 0
    assert set(summary["by_op"]) >= {"complete", "stream_memory", "stacked", "upload", "download", "wrong_key",
                                     "other_key", "job"}, summary["by_op"]
    assert summary["by_status"].get("200", 0) >= 20, summary["by_status"]
    for result in (kill["audit"], final):
        assert result["lost"] == result["corrupt"] == result["resurrected"] == result["jobs_lost"] == 0, result
        assert result["jobs_failed_without_reason"] == result["jobs_stuck"] == 0, result
    assert final["memories_checked"] >= len(pool) and final["jobs_unfinished"] == 0, final
    assert sum(final["jobs"].values()) == len(traffic.ledger.jobs) >= 2
    assert before == after, "a probe answer changed after the load, the kill and the restart"
    assert returncode == 0 and server.temporary_files() == []
    assert any("rss_mib" in s for s in traffic.samples)


def test_temporary_files_a_kill_left_are_removed_when_the_store_opens(world, tmp_path):
    from locas.serve.store import MemoryStore

    _, _, files, lm = world
    store = MemoryStore(tmp_path, lm)
    store.put_bytes("owner", "kept", files["pool-0"])
    stale = [tmp_path / "owner" / ".upload.k1ll3d.tmp", tmp_path / ".jobs" / "owner" / ".job-1.json.x9.tmp"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")
    reopened = MemoryStore(tmp_path, lm)
    assert reopened.swept == 2 and not any(p.exists() for p in stale)
    assert reopened.read_bytes("owner", "kept") == files["pool-0"]


def test_a_memory_deleted_while_the_list_is_made_is_left_out(world, tmp_path, monkeypatch):
    from locas.serve.store import MemoryStore, NotFound

    _, _, files, lm = world
    store = MemoryStore(tmp_path, lm)
    store.put_bytes("owner", "kept", files["pool-0"])
    monkeypatch.setattr(store, "ids", lambda owner: ["gone", "kept"])  # "gone" was deleted after the folder was read
    assert [m["id"] for m in store.list("owner")] == ["kept"]
    with pytest.raises(NotFound):
        store.describe("owner", "gone")
