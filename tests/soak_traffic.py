"""Mixed traffic against a real `locas serve` process, kills and restarts, and the audit of what it acknowledged.

Used by tests/test_soak.py (a short run on a tiny model) and benchmarks/soak.py (30 minutes on SmolLM2).
The clients are the official ``openai`` async client (completions and chat, streaming or not) and
``httpx`` (memories and jobs), all on loopback. Every request ends as a record: what it was, its HTTP
status (or ``down`` when no server was listening, ``cut`` when a kill cut it), time to first token
and in total. A ``Ledger`` remembers what the server acknowledged (memories with the sha256 of their
bytes, deletions, jobs) so that ``audit`` can check nothing was lost across restarts.

    >>> srv = ServerProcess(["--model", model_dir], memory_dir, log)
    >>> srv.start()
    >>> traffic = Traffic(srv, pool=ids, files=upload_bytes, texts=job_texts, prompts=PROMPTS)
    >>> records = asyncio.run(traffic.open_loop(rate=3.0, seconds=60))
    >>> asyncio.run(audit(traffic.http, traffic.ledger))   # {"memories_checked", "lost", "corrupt", ...}
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

KEY, OTHER_KEY, WRONG_KEY = "soak-key-a", "soak-key-b", "soak-not-a-key"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

# operation -> (weight, statuses that mean the server did what it should); see Traffic.run for each
MIX = {
    "complete": (14, {200}),             # a completion, no memory
    "complete_memory": (14, {200}),      # a completion with one memory of the pool
    "stream_memory": (12, {200}),        # the same, streamed
    "chat_stream": (8, {200}),           # a chat completion with a memory, streamed
    "chat": (4, {200}),                  # a chat completion, no memory
    "stacked": (6, {200}),               # two memories at once
    "hang_up": (6, {200}),               # a stream the client leaves after its first tokens
    "upload": (4, {201}),                # a memory file under a new id
    "download": (4, {200}),              # an acknowledged memory's bytes, checked against what was uploaded
    "delete": (3, {200}),                # an uploaded memory (never one of the pool)
    "wrong_key": (3, {401}),             # an unknown API key
    "other_key": (3, {404}),             # another key asks for this key's memory: not found, not forbidden
    "list": (3, {200}),                  # GET /v1/memories and /v1/jobs
}
SHED, DRAINING = "503 server_overloaded", "503 server_shutting_down"  # the two documented 503s, by error code
EXPECTED = {op: statuses for op, (_, statuses) in MIX.items()} | {"job": {202, 429}}  # 429: the job queue is full
REFUSED = {SHED, DRAINING}  # shed (queue full) or draining: documented, with Retry-After
ACCEPTABLE = REFUSED | {"down", "cut", "stopped"}  # what kills and stops do to requests (see Traffic._classify)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ServerProcess:
    """`python -m locas serve` on a fixed loopback port, started, killed and restarted in place."""

    def __init__(self, model_args: list[str], memory_dir: Path, log: Path, extra: list[str] = ()):
        self.memory_dir, self.log = Path(memory_dir), Path(log)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        keys = self.memory_dir.parent / "keys.txt"
        keys.write_text(f"{KEY}\n{OTHER_KEY}\n")
        self.argv = [sys.executable, "-m", "locas", "serve", "--memory-dir", str(self.memory_dir), "--port",
                     str(self.port), "--api-keys", str(keys), "--served-model-name", "served", *model_args, *extra]
        self.proc: subprocess.Popen | None = None
        self.starts: list[float] = []  # seconds from launch to a healthy server, per start
        self.exits: list[dict] = []  # how each life ended: {"how", "returncode", "seconds"}

    def start(self, timeout: float = 600) -> None:
        t0 = time.perf_counter()
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=ENV)
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"locas serve exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).json()["status"] == "ok":
                    self.starts.append(time.perf_counter() - t0)
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"locas serve did not answer /health within {timeout} s")

    def kill(self) -> None:
        t0 = time.perf_counter()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.exits.append({"how": "SIGKILL", "returncode": self.proc.returncode, "seconds": time.perf_counter() - t0})

    def stop(self, timeout: float = 120) -> int:
        """SIGTERM: the server drains and exits; its exit status (0 when it stopped cleanly)."""
        t0 = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.exits.append({"how": "SIGTERM", "returncode": self.proc.returncode, "seconds": time.perf_counter() - t0})
        return self.proc.returncode

    def sample(self) -> dict | None:
        """Resident memory (MiB) and open file descriptors of the running server, from /proc."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
            rss_kb = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmRSS:")))
            fds = len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        except (OSError, StopIteration):
            return None
        return {"rss_mib": rss_kb / 1024, "fds": fds}

    def temporary_files(self) -> list[str]:
        return sorted(str(p.relative_to(self.memory_dir)) for p in self.memory_dir.glob("**/*.tmp"))


class Ledger:
    """What the server acknowledged: memories (id -> sha256 of the bytes sent), deletions, jobs."""

    def __init__(self):
        self.memories: dict[str, str] = {}
        self.deleted: set[str] = set()
        self.uncertain: set[str] = set()  # an upload or delete whose answer a kill cut: either outcome is fine
        self.jobs: dict[str, int] = {}  # job id -> the server life that accepted it
        self.busy: set[str] = set()  # being downloaded or deleted now


class Traffic:
    """The load generator. ``pool`` are memory ids uploaded before the run (used by generation requests, never
    deleted); ``files`` memory files' bytes to upload under new ids; ``texts`` texts for memorisation jobs."""

    def __init__(self, server: ServerProcess, pool: list[str], files: list[bytes], texts: list[str],
                 prompts: list[str], max_tokens: int = 16, mix: dict | None = None, seed: int = 0,
                 max_inflight: int = 256, job_settings: dict | None = None):
        from openai import AsyncOpenAI

        self.server, self.pool, self.files, self.texts, self.prompts = server, pool, files, texts, prompts
        self.max_tokens, self.mix = max_tokens, mix or MIX
        self.rng = random.Random(seed)
        self.max_inflight = max_inflight
        self.job_settings = job_settings or {"epochs": 1}
        self.ledger = Ledger()
        self.records: list[dict] = []
        self.samples: list[dict] = []
        self.events: list[dict] = []  # kills, stops, restarts
        self.epoch = 0  # server lives so far (a kill or stop starts the next)
        self.down = False  # between a kill or stop and the next healthy start
        self.not_sent = 0  # open loop: arrivals dropped because max_inflight requests were outstanding
        self.t0 = time.perf_counter()
        self._ids = 0
        limits = httpx.Limits(max_connections=max_inflight, max_keepalive_connections=64)
        timeout = httpx.Timeout(300, connect=10)
        self.http = httpx.AsyncClient(base_url=server.url, timeout=timeout, limits=limits)
        self.api = {k: AsyncOpenAI(base_url=f"{server.url}/v1", api_key=k, max_retries=0, timeout=300,
                                   http_client=httpx.AsyncClient(timeout=timeout, limits=limits))
                    for k in (KEY, OTHER_KEY, WRONG_KEY)}

    async def aclose(self) -> None:
        await self.http.aclose()
        for api in self.api.values():
            await api.close()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def _new_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}-{self._ids}-{self.rng.randrange(1 << 30):x}"

    # ---- one request ----------------------------------------------------------------------------------
    async def run(self, op: str) -> dict:
        if op == "delete" and not self._uploaded():
            op = "upload"  # nothing of the traffic's own to delete yet
        rec = {"op": op, "t": self.now(), "epoch": self.epoch, "ttft": None}
        t0 = time.perf_counter()
        try:
            rec["status"] = await getattr(self, f"_{op}")(rec, t0)
        except Exception as exc:  # noqa: BLE001 - every way a request can end is classified
            rec["status"], rec["detail"] = self._classify(exc, rec["epoch"])
        rec["total"] = time.perf_counter() - t0
        rec["ok"] = rec["status"] in EXPECTED[op] or rec["status"] in ACCEPTABLE
        self.records.append(rec)
        return rec

    def _classify(self, exc: Exception, started_epoch: int) -> tuple:
        """(status, detail) of a request that raised: an HTTP error status, ``down`` (no server listening, between
        a kill and the restart), ``cut`` (a kill or stop cut it), ``stopped`` (a stream a stop ended with its
        documented error event), or what should not happen: ``connection_error``, ``stream_error``."""
        import openai

        detail = f"{type(exc).__name__}: {exc}"[:200]
        if isinstance(exc, openai.APIStatusError):
            return _label(exc.status_code, getattr(exc, "code", None)), detail
        if isinstance(exc, (openai.APIConnectionError, httpx.TransportError)):
            if self.down or self.epoch != started_epoch:
                return ("down" if _refused(exc) else "cut"), detail
            return "connection_error", detail
        if isinstance(exc, openai.APIError):  # an error event inside a stream: documented only for a stop
            stopping = "server is stopping" in str(exc) and (self.down or self.epoch != started_epoch)
            return ("stopped" if stopping else "stream_error"), detail
        return "client_error", detail

    async def _generate(self, rec, t0, *, chat=False, memory=None, stream=False, hang_up=False, key=KEY) -> int:
        api = self.api[key]
        prompt = self.rng.choice(self.prompts)
        extra = {"memory": memory} if memory is not None else None
        common = dict(model="served", max_tokens=self.max_tokens, temperature=0, stream=stream, extra_body=extra)
        if chat:
            call = api.chat.completions.create(messages=[{"role": "user", "content": prompt}], **common)
        else:
            call = api.completions.create(prompt=prompt, **common)
        if not stream:
            await call
            return 200
        chunks = 0
        response = await call
        async for _ in response:
            chunks += 1
            if chunks == 1:
                rec["ttft"] = time.perf_counter() - t0
            if hang_up and chunks >= 2:
                await response.close()
                break
        return 200

    async def _complete(self, rec, t0):
        return await self._generate(rec, t0)

    async def _complete_memory(self, rec, t0):
        return await self._generate(rec, t0, memory=self.rng.choice(self.pool))

    async def _stream_memory(self, rec, t0):
        return await self._generate(rec, t0, memory=self.rng.choice(self.pool), stream=True)

    async def _chat_stream(self, rec, t0):
        return await self._generate(rec, t0, chat=True, memory=self.rng.choice(self.pool), stream=True)

    async def _chat(self, rec, t0):
        return await self._generate(rec, t0, chat=True)

    async def _stacked(self, rec, t0):
        return await self._generate(rec, t0, memory=self.rng.sample(self.pool, 2))

    async def _hang_up(self, rec, t0):
        return await self._generate(rec, t0, memory=self.rng.choice(self.pool), stream=True, hang_up=True)

    async def _wrong_key(self, rec, t0):
        return await self._generate(rec, t0, key=WRONG_KEY)

    async def _other_key(self, rec, t0):
        return await self._generate(rec, t0, memory=self.rng.choice(self.pool), key=OTHER_KEY)

    def _auth(self, key: str = KEY) -> dict:
        return {"Authorization": f"Bearer {key}"}

    @staticmethod
    def _status(r: httpx.Response):
        """The status of an answer (a 503 labelled with its code: overloaded or shutting down)."""
        if r.status_code != 503:
            return r.status_code
        try:
            return _label(503, r.json()["error"]["code"])
        except (ValueError, KeyError, TypeError):
            return _label(503, None)

    async def _upload(self, rec, t0):
        data, memory_id = self.rng.choice(self.files), self._new_id("up")
        self.ledger.uncertain.add(memory_id)
        r = await post_memory(self.http, memory_id, data)
        self.ledger.uncertain.discard(memory_id)
        if r.status_code == 201:
            self.ledger.memories[memory_id] = sha256(data)
        return self._status(r)

    def _uploaded(self) -> list[str]:
        """Memories the traffic uploaded itself (deletable), not being downloaded or deleted now."""
        return sorted(m for m in self.ledger.memories if m not in self.pool and m not in self.ledger.busy
                      and m.startswith("up-"))

    async def _download(self, rec, t0):
        ids = sorted(m for m in self.ledger.memories if m not in self.ledger.busy)
        memory_id = self.rng.choice(ids)
        self.ledger.busy.add(memory_id)
        try:
            r = await self.http.get(f"/v1/memories/{memory_id}/content", headers=self._auth())
        finally:
            self.ledger.busy.discard(memory_id)
        digest = self.ledger.memories.get(memory_id)
        if r.status_code == 200 and digest and sha256(r.content) != digest:
            rec["detail"] = f"{memory_id}: the bytes differ from those uploaded"
            return "corrupt"
        return self._status(r)

    async def _delete(self, rec, t0):
        memory_id = self.rng.choice(self._uploaded())
        digest = self.ledger.memories.pop(memory_id)
        self.ledger.busy.add(memory_id)
        self.ledger.uncertain.add(memory_id)  # until the answer arrives (a kill may cut it: either outcome is fine)
        try:
            r = await self.http.delete(f"/v1/memories/{memory_id}", headers=self._auth())
        finally:
            self.ledger.busy.discard(memory_id)
        self.ledger.uncertain.discard(memory_id)
        if r.status_code == 200:
            self.ledger.deleted.add(memory_id)
        else:  # refused (503): still there
            self.ledger.memories[memory_id] = digest
        return self._status(r)

    async def _list(self, rec, t0):
        for path in ("/v1/memories", "/v1/jobs"):
            r = await self.http.get(path, headers=self._auth())
            if r.status_code != 200:
                return self._status(r)
        return 200

    async def _job(self, rec, t0):
        memory_id = self._new_id("job")
        body = {"text": self.rng.choice(self.texts), "id": memory_id, "settings": self.job_settings}
        r = await self.http.post("/v1/memories", json=body, headers=self._auth())
        if r.status_code == 202:
            self.ledger.jobs[r.json()["id"]] = self.epoch
        return self._status(r)

    # ---- load shapes ----------------------------------------------------------------------------------
    def _pick(self) -> str:
        ops = list(self.mix)
        return self.rng.choices(ops, weights=[self.mix[o][0] for o in ops])[0]

    async def open_loop(self, rate: float, seconds: float, phase: str = "load") -> list[dict]:
        """Poisson arrivals at ``rate`` requests/s for ``seconds``, whatever the answers (an open loop)."""
        tasks: set[asyncio.Task] = set()
        first = len(self.records)
        end = time.perf_counter() + seconds
        while True:
            await asyncio.sleep(self.rng.expovariate(rate))
            if time.perf_counter() >= end:
                break
            if len(tasks) >= self.max_inflight:
                self.not_sent += 1
                continue
            task = asyncio.create_task(self.run(self._pick()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        return self._tag(first, phase)

    async def closed_loop(self, clients: int, seconds: float, phase: str = "closed") -> list[dict]:
        """``clients`` clients, each sending its next request when its last one is answered."""
        first = len(self.records)
        end = time.perf_counter() + seconds

        async def client():
            while time.perf_counter() < end:
                await self.run(self._pick())

        await asyncio.gather(*(client() for _ in range(clients)))
        return self._tag(first, phase)

    def _tag(self, first: int, phase: str) -> list[dict]:
        for rec in self.records[first:]:
            rec.setdefault("phase", phase)
        return self.records[first:]

    async def jobs_every(self, seconds: float, until: float) -> None:
        """A memorisation job every ``seconds`` (jobs train for seconds, so they are paced, not mixed in)."""
        while self.now() + seconds < until:
            await asyncio.sleep(seconds)
            await self.run("job")

    async def sample_every(self, seconds: float, until: float) -> None:
        """Resident memory, file descriptors and the server's queue, every ``seconds``."""
        while self.now() < until:
            row = {"t": self.now(), "epoch": self.epoch, **(self.server.sample() or {})}
            if not self.down:
                try:
                    health = (await self.http.get("/health", timeout=5)).json()
                    row.update(queued=health["queued"], running=health["running"])
                except (httpx.HTTPError, ValueError, KeyError):
                    pass
            self.samples.append(row)
            await asyncio.sleep(seconds)

    async def fault(self, how: str) -> dict:
        """SIGKILL (``kill``) or SIGTERM (``stop``) the server under load, restart it, audit the ledger."""
        self.down = True
        self.epoch += 1
        t = self.now()
        if how == "kill":
            await asyncio.to_thread(self.server.kill)
            returncode = None
        else:
            returncode = await asyncio.to_thread(self.server.stop)
        await asyncio.to_thread(self.server.start)
        self.down = False
        event = {"t": t, "how": how, "returncode": returncode, "restart_s": self.server.starts[-1],
                 "audit": await audit(self.http, self.ledger, restarted=self.epoch)}
        self.events.append(event)
        return event


def _label(status: int, code: str | None):
    """A 503 carries its error code (``SHED`` or ``DRAINING``); a 503 with another code is a failure."""
    return f"503 {code}" if status == 503 else status


def _refused(exc: Exception) -> bool:
    """No server was listening: the connection itself was refused (the openai client raises from httpx's error)."""
    return isinstance(exc, httpx.ConnectError) or isinstance(exc.__cause__, httpx.ConnectError)


async def audit(http: httpx.AsyncClient, ledger: Ledger, jobs_final: bool = False,
                restarted: int | None = None) -> dict:
    """Every acknowledged memory downloads with the bytes that were uploaded and is listed; every deleted one is
    gone; every accepted job has a record; a job accepted by an earlier life than ``restarted`` (the life just
    started) is no longer queued or running; with ``jobs_final`` no job is.
    """
    auth = {"Authorization": f"Bearer {KEY}"}
    out, lost = Counter(), []
    known = dict(ledger.memories)  # acknowledged before the listing was asked for (the traffic goes on meanwhile)
    listed = {m["id"] for m in (await http.get("/v1/memories", headers=auth)).json()["data"]}

    def settled(memory_id: str) -> bool:  # not being deleted, deleted or re-uploaded by the traffic meanwhile
        return memory_id in ledger.memories and not ({memory_id} & (ledger.uncertain | ledger.busy | ledger.deleted))

    for memory_id, digest in sorted(known.items()):
        if not settled(memory_id):
            continue
        r = await http.get(f"/v1/memories/{memory_id}/content", headers=auth)
        if not settled(memory_id):
            continue
        out["memories_checked"] += 1
        if r.status_code != 200 or memory_id not in listed:
            out["lost"] += 1
            lost.append({"id": memory_id, "status": r.status_code, "listed": memory_id in listed})
        elif digest and sha256(r.content) != digest:
            out["corrupt"] += 1
            lost.append({"id": memory_id, "status": r.status_code, "corrupt": True})
    for memory_id in sorted(ledger.deleted - ledger.uncertain):
        out["deleted_checked"] += 1
        if (await http.get(f"/v1/memories/{memory_id}", headers=auth)).status_code != 404:
            out["resurrected"] += 1
    states = Counter()
    for job_id in sorted(ledger.jobs):
        r = await http.get(f"/v1/jobs/{job_id}", headers=auth)
        if r.status_code != 200:
            out["jobs_lost"] += 1
            continue
        job = r.json()
        states[job["state"]] += 1
        if restarted is not None and ledger.jobs[job_id] < restarted and job["state"] in ("queued", "running"):
            out["jobs_stuck"] += 1
        if job["state"] == "failed" and not job.get("error"):
            out["jobs_failed_without_reason"] += 1
        if job["state"] == "succeeded" and job.get("memory") and job["memory"] not in ledger.memories \
                and job["memory"] not in ledger.deleted:
            ledger.memories[job["memory"]] = ""  # a job's memory: checked for presence from now on
    if jobs_final:
        out["jobs_unfinished"] = states["queued"] + states["running"]
    return {"memories_checked": out["memories_checked"], "lost": out["lost"], "corrupt": out["corrupt"],
            "deleted_checked": out["deleted_checked"], "resurrected": out["resurrected"], "jobs": dict(states),
            "jobs_lost": out["jobs_lost"], "jobs_failed_without_reason": out["jobs_failed_without_reason"],
            "jobs_stuck": out["jobs_stuck"], "lost_ids": lost[:10],
            **({"jobs_unfinished": out["jobs_unfinished"]} if jobs_final else {})}


async def wait_for_jobs(http: httpx.AsyncClient, timeout: float) -> None:
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        health = (await http.get("/health")).json()
        if not health["jobs_pending"]:
            return
        await asyncio.sleep(1)


async def probes(url: str, prompts: list[str], memories: list, max_tokens: int = 12) -> list[str]:
    """Greedy answers for every prompt under every memory choice (None, an id, a list of ids), one at a time."""
    from openai import AsyncOpenAI

    api = AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=300)
    out = []
    try:
        for memory in memories:
            for prompt in prompts:
                extra = {"memory": memory} if memory is not None else None
                r = await api.completions.create(model="served", prompt=prompt, max_tokens=max_tokens,
                                                 temperature=0, extra_body=extra)
                out.append(r.choices[0].text)
    finally:
        await api.close()
    return out


async def post_memory(http: httpx.AsyncClient, memory_id: str, data: bytes) -> httpx.Response:
    """Upload a memory file's bytes under ``memory_id`` with ``KEY``."""
    return await http.post("/v1/memories", files={"file": ("m.locas", data)}, data={"id": memory_id},
                           headers={"Authorization": f"Bearer {KEY}"})


async def upload_pool(url: str, files: dict[str, bytes], ledger: Ledger) -> None:
    """Upload the pool's memory files (id -> bytes) and record them as acknowledged."""
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        for memory_id, data in files.items():
            (await post_memory(http, memory_id, data)).raise_for_status()
            ledger.memories[memory_id] = sha256(data)


def summarize(records: list[dict]) -> dict:
    """Counts by status and operation, unexpected answers, throughput and latency percentiles."""
    by_status = Counter(str(r["status"]) for r in records)
    bad = [r for r in records if not r["ok"]]
    answered = [r for r in records if r["status"] not in ACCEPTABLE]
    gen = [r for r in answered if r["op"] in GENERATION and r["status"] == 200]
    span = (max(r["t"] + r["total"] for r in records) - min(r["t"] for r in records)) if records else 0.0
    ttft = [r["ttft"] for r in gen if r["ttft"] is not None]
    return {"requests": len(records), "answered": len(answered), "by_status": dict(sorted(by_status.items())),
            "by_op": dict(Counter(r["op"] for r in records)), "unexpected": len(bad),
            "unexpected_examples": [{k: r.get(k) for k in ("op", "status", "detail", "t")} for r in bad[:10]],
            "server_errors": sum((isinstance(r["status"], int) and r["status"] >= 500)
                                 or (isinstance(r["status"], str) and r["status"].startswith("5")
                                     and r["status"] not in REFUSED) for r in records),
            "shed": by_status[SHED], "shed_draining": by_status[DRAINING],
            "seconds": span, "answered_per_s": len(answered) / span if span else 0.0,
            "generations_per_s": len(gen) / span if span else 0.0,
            "latency_p50_s": percentile([r["total"] for r in gen], 0.5),
            "latency_p99_s": percentile([r["total"] for r in gen], 0.99),
            "ttft_p50_s": percentile(ttft, 0.5), "ttft_p99_s": percentile(ttft, 0.99)}


GENERATION = ("complete", "complete_memory", "stream_memory", "chat_stream", "chat", "stacked")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


async def idle_flood(url: str, count: int, hold_s: float) -> dict:
    """Open ``count`` connections that send nothing and wait up to ``hold_s`` for the server to close them."""
    host, port = url.removeprefix("http://").split(":")
    t0 = time.perf_counter()
    closed: list[float] = []
    refused = 0

    async def one():
        nonlocal refused
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
        except OSError:
            refused += 1
            return
        try:
            if await asyncio.wait_for(reader.read(1), timeout=hold_s) == b"":
                closed.append(time.perf_counter() - t0)
        except (asyncio.TimeoutError, OSError):
            pass
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(count)))
    return {"opened": count - refused, "refused": refused, "closed_by_server": len(closed),
            "closed_after_s_max": max(closed, default=None)}
