"""Background memorisation jobs: `POST /v1/memories` with a text trains a memory while the server answers.

A job runs ``learn.memorize.memorize_text`` (the code of `locas memorize`) in a worker thread on
its own copy of the model (loaded once, so training never touches the model that serves), then
saves the memory atomically in the store. Job records live in ``<memory-dir>/.jobs/<owner>/``
(written atomically on every state change); a job that was queued or running when the server
stopped is reported as failed on restart, and its memory was never written. A job of a window objective
records its learning curve: the perplexity of each window, scored before it was learned (``curve``).

    >>> jobs = Jobs(store, load_model=lambda: LocasForCausalLM.from_pretrained("smollm2-135m"))
    >>> record = jobs.submit("public", "notes", text, TrainConfig(objective="ntp", epochs=2))
    >>> jobs.get("public", record["id"])["state"]        # queued | running | succeeded | failed
"""

from __future__ import annotations

import dataclasses
import json
import math
import queue
import secrets
import threading
import time
from pathlib import Path

from ..core.files import atomic_write
from ..errors import LocasError
from .heap import release_free_memory
from .store import NotFound, check_id

STATES = ("queued", "running", "succeeded", "failed")


class JobsFull(LocasError):
    """The server has as many jobs queued or running as it takes."""


class _Stopped(Exception):
    """Raised in a job's progress callback once the server has closed: its training ends at the next window or
    step (a job asked for a budget of hours does not train on after the server has gone)."""


class Jobs:
    def __init__(self, store, load_model, max_pending: int = 4):
        self.store, self.load_model, self.max_pending = store, load_model, max_pending
        self.root = store.root / ".jobs"
        self.records: dict[tuple[str, str], dict] = {}
        self.lock = threading.RLock()
        self.queue: queue.Queue = queue.Queue()
        self.model = None
        self.closed = False
        self._recover()
        self.thread = threading.Thread(target=self._loop, name="locas-jobs", daemon=True)
        self.thread.start()

    # ---- records -----------------------------------------------------------------------------------
    def _file(self, owner: str, job_id: str) -> Path:
        return self.root / owner / f"{check_id(job_id)}.json"

    def _write(self, owner: str, record: dict) -> None:
        text = json.dumps(record, indent=1)
        atomic_write(self._file(owner, record["id"]), lambda tmp: Path(tmp).write_text(text))

    def _recover(self) -> None:
        """Jobs that were queued or running when the server stopped are failed (their memory was not written)."""
        for path in self.root.glob("*/*.json"):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            owner = path.parent.name
            record.setdefault("curve", {"tokens": [], "ppl": []})  # a record written before jobs had curves
            self.records[(owner, record["id"])] = record
            if record.get("state") in ("queued", "running"):
                self._interrupt(owner, record["id"], "interrupted by a server restart; submit the text again")

    def get(self, owner: str, job_id: str) -> dict:
        with self.lock:
            record = self.records.get((owner, job_id))
            if record is None:
                raise NotFound(job_id)
            return dict(record)  # the curve is replaced on every update, never changed in place

    def list(self, owner: str) -> list[dict]:
        with self.lock:
            return [dict(r) for (o, _), r in sorted(self.records.items()) if o == owner]

    def pending(self) -> int:
        with self.lock:
            return sum(r["state"] in ("queued", "running") for r in self.records.values())

    # ---- work ------------------------------------------------------------------------------------------
    def submit(self, owner: str, memory_id: str, text: str, cfg, settings=None, budget_s: float | None = None,
               preset: str | None = None) -> dict:
        with self.lock:
            if self.pending() >= self.max_pending:
                raise JobsFull(f"the server already has {self.max_pending} memorisation jobs queued or running; "
                                 "wait for one to finish")
            making = [r["memory"] for (o, _), r in self.records.items()
                      if o == owner and r["state"] in ("queued", "running")]
            if memory_id in making:
                raise FileExistsError(memory_id)
            self.store.room(owner, memory_id, pending=len(making))  # FileExistsError, StoreFull
            job_id = f"job-{secrets.token_hex(6)}"
            record = {"id": job_id, "object": "job", "memory": memory_id, "state": "queued", "progress": 0.0,
                      "tokens_done": 0, "tokens_total": None, "steps": 0, "eta_s": None, "error": None,
                      "created": time.time(), "started": None, "finished": None, "objective": cfg.objective,
                      "preset": preset, "config": cfg.to_dict(), "study": _study(cfg, settings),
                      "curve": {"tokens": [], "ppl": []}}
            self.records[(owner, job_id)] = record
            self._write(owner, record)
        self.queue.put((owner, job_id, text, cfg, settings, budget_s))
        return dict(record)

    def _update(self, owner: str, job_id: str, persist: bool = True, **changes) -> None:
        with self.lock:
            record = self.records[(owner, job_id)]
            record.update(changes)
            if persist:
                self._write(owner, record)

    def _loop(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            owner, job_id, text, cfg, settings, budget_s = item
            if self.closed:  # queued when the server stopped: already recorded as interrupted
                continue
            try:
                self._run(owner, job_id, text, cfg, settings, budget_s)
            except _Stopped:  # the server closed while it trained: already recorded as interrupted
                continue
            except Exception as exc:  # a failed job is reported, never the end of the worker
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self._update(owner, job_id, state="failed", error=msg, finished=time.time())
            finally:  # the training's activations and gradients, freed, back to the system (resident memory flat)
                release_free_memory()

    def _run(self, owner, job_id, text, cfg, settings, budget_s) -> None:
        from ..learn.memorize import memorize_text
        from ..text.tokens import tokenize_text

        started = time.time()
        self._update(owner, job_id, state="running", started=started)
        if self.model is None:
            self.model = self.load_model()
        lm = self.model
        cfg = dataclasses.replace(cfg, memory_on=lm.site)  # the server's memory site (locas serve --memory-on)
        tokens = tokenize_text(lm.tokenizer, text)
        self._update(owner, job_id, tokens_total=len(tokens))
        last = [0.0]

        def progress(fraction, info):
            if self.closed:
                raise _Stopped()
            now = time.time()
            eta = (now - started) / fraction * (1 - fraction) if fraction else None
            persist = now - last[0] > 1.0  # the record on disk follows about once a second
            last[0] = now if persist else last[0]
            changes = {}
            if "nll" in info:  # a window objective: the window's perplexity before it was learned
                curve = self.records[(owner, job_id)]["curve"]
                changes["curve"] = {"tokens": curve["tokens"] + [info["tokens_done"]],
                                    "ppl": curve["ppl"] + [round(math.exp(min(info["nll"], 50.0)), 4)]}
            self._update(owner, job_id, persist=persist, progress=round(fraction or 0.0, 4),
                         tokens_done=info["tokens_done"], steps=info["steps"],
                         eta_s=None if eta is None else round(eta, 1), **changes)

        result = memorize_text(lm, text, cfg, settings, tokens=tokens, budget_s=budget_s, progress=False,
                               on_progress=progress)
        if self.closed:  # the server stopped while it trained: recorded as interrupted, nothing saved
            return
        self.store.save(owner, self.records[(owner, job_id)]["memory"], result.learner.full_memory(),
                        extra={"train": cfg.to_dict(), "source": "job", "job": job_id, **result.summary()})
        self._update(owner, job_id, state="succeeded", progress=1.0, eta_s=0.0, finished=time.time(),
                     tokens_done=len(tokens))

    def close(self) -> None:
        """Stop the worker; a job still queued or running is recorded as failed now ("interrupted"), its memory
        never written, so that no record says ``running`` after the server has gone; a running job's training stops
        at its next window or step."""
        with self.lock:
            for (owner, job_id), record in list(self.records.items()):
                if record["state"] in ("queued", "running"):
                    self._interrupt(owner, job_id, "interrupted: the server stopped before the job finished; "
                                                   "submit the text again")
            self.closed = True
        self.queue.put(None)

    def _interrupt(self, owner: str, job_id: str, why: str) -> None:
        """A job that will not finish: failed with ``why``, on disk too (its memory is never written)."""
        self._update(owner, job_id, state="failed", error=why, finished=time.time())


def _study(cfg, settings) -> dict | None:
    """What a selfstudy job's record shows of its objective's own settings (its recall preset's silence term, ...)."""
    if cfg.objective != "selfstudy":  # TrainConfig keeps it lower-case
        return None
    from ..learn.objectives import ObjectiveSettings

    return (settings or ObjectiveSettings()).selfstudy.to_dict()
