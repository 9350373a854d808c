"""``locas serve --memory-dir DIR``: an OpenAI-compatible HTTP server, one model and a memory per request.

    $ locas serve --memory-dir memories/ --port 8000
    $ curl -s localhost:8000/v1/completions -d '{"model": "notes", "prompt": "Ann adopted", "max_tokens": 16}'

See docs/SERVING.md for the API. ``--check`` loads everything, checks the port and exits.
"""

from __future__ import annotations

from ..checks import path_arg
from ..flags import Number, add_model_args

HELP = "serve the model over HTTP (OpenAI-compatible API) with a memory per request; see docs/SERVING.md"
EXTRA = "serve"  # locas[serve]: checked before any work (locas/extras.py)
# a small valid invocation: the bad-input matrix (tests/test_bad_input.py) runs it, then breaks it
EXAMPLE = {"--memory-dir": "{out}", "--port": "0", "--check": True, "--model": "{model}", "--device": "cpu"}
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_arguments(p):
    path_arg(p, "--memory-dir", kind="store", required=True,
             help="directory of the served memories (<owner>/<id>.locas) and job records; created if missing "
                  "(required)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, loopback only)")
    p.add_argument("--port", type=Number(int, minimum=0, maximum=65535), default=8000,
                   help="port (0: any free port, printed at start) (default: 8000)")
    path_arg(p, "--api-keys", kind="keys", default=None,
             help="file of API keys, one per line: every request then needs 'Authorization: Bearer <key>' and sees "
                  "only its own memories (default: none: open, for loopback use)")
    p.add_argument("--allow-open", action="store_true",
                   help="serve a non-loopback --host without --api-keys (refused otherwise) (default: off)")
    p.add_argument("--served-model-name", default=None,
                   help="the base model's id in the API (default: the --model name)")
    p.add_argument("--memory-on", default="ffn", choices=("ffn", "attn", "both"),
                   help="the site of the served memories and of the jobs' (a memory file of the other site is "
                        "refused) (default: ffn)")
    g = p.add_argument_group("batching and limits")
    g.add_argument("--max-batch", type=Number(int, minimum=1, maximum=1024), default=16,
                   help="requests decoded together (default: 16)")
    g.add_argument("--max-wait-ms", type=Number(float, minimum=0, maximum=60_000), default=10.0,
                   help="how long a request waits for company when nothing is decoding (a running batch is "
                        "joined at its next step) (default: 10)")
    g.add_argument("--max-queue", type=Number(int, minimum=0, maximum=1_000_000), default=None,
                   help="requests waiting for a place in the batch; more are refused with 503 and Retry-After "
                        "(default: --max-batch: an admitted request then waits about one request's time at most)")
    g.add_argument("--drain-timeout", type=Number(float, minimum=0, maximum=3600), default=30.0,
                   help="on SIGTERM or Ctrl-C: seconds to let running requests finish while new ones get 503; "
                        "what is still running then ends with an error event (default: 30)")
    g.add_argument("--max-memories", type=Number(int, minimum=1, maximum=10_000_000), default=1000,
                   help="memories per API key (default: 1000)")
    g.add_argument("--memory-cache", type=Number(int, minimum=1, maximum=100_000), default=64,
                   help="memories kept laid out on the device; the least recently used beyond this are dropped and "
                        "loaded again from disk when asked for (default: 64)")
    g.add_argument("--memory-dtype", choices=("float32", "bfloat16", "model"), default="float32",
                   help="dtype of the memories' serving copies (files stay float32): float32 is exact; bfloat16 reads "
                        "half the bytes per decoding step, where memory bandwidth bounds it (a GPU), at a measured "
                        "cost in exactness (docs/PERFORMANCE.md); model: the model's dtype (default: float32)")
    g.add_argument("--max-jobs", type=Number(int, minimum=1, maximum=1024), default=4,
                   help="memorisation jobs queued or running at once (default: 4)")
    g.add_argument("--max-upload-mb", type=Number(float, positive=True, maximum=1_000_000), default=512.0,
                   help="largest memory file accepted (default: 512)")
    p.add_argument("--check", action="store_true",
                   help="load the model, memories and keys, check the port can be bound, print what would be "
                        "served, and exit (default: off)")
    add_model_args(p)


def _bind(host: str, port: int):
    """The listening socket, bound here so a port in use is a one-line error before the server starts."""
    import socket

    from ...errors import LocasError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise LocasError(f"--host {host}: not an address of this machine; use 127.0.0.1 or 0.0.0.0") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise LocasError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port or stop the "
                         "process using it") from None
    sock.listen(1024)
    return sock


def run(args):
    import warnings

    import torch

    from ...errors import LocasError, LocasWarning
    from ...serve.app import Limits, Server
    from ...serve.auth import ApiKeys
    from ..flags import load_lm

    keys = ApiKeys.from_file(args.api_keys) if args.api_keys else ApiKeys()
    if args.host not in LOOPBACK and not keys.enabled:
        if not args.allow_open:
            raise LocasError(f"--host {args.host} without --api-keys would let anyone who reaches the port use, "
                             "upload and delete memories; give --api-keys FILE (or --allow-open to do it anyway)")
        warnings.warn(f"serving on {args.host} without --api-keys (--allow-open): anyone who can reach this port "
                      "can use, upload and delete memories", LocasWarning, stacklevel=1)
    sock = _bind(args.host, args.port)
    try:
        lm = load_lm(args)
        server = Server(lm, args.memory_dir, model_id=args.served_model_name, keys=keys, max_batch=args.max_batch,
                        max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, max_memories=args.max_memories,
                        memory_cache=args.memory_cache, max_jobs=args.max_jobs,
                        memory_dtype=serving_dtype(args.memory_dtype, lm),
                        load_job_model=lambda: load_lm(args),
                        limits=Limits(max_upload_bytes=int(args.max_upload_mb * (1 << 20))))
        host, port = sock.getsockname()[:2]
        counts = server.store.census()
        print(f"locas serve: {server.model_id} on http://{host}:{port}/v1 ({lm.device}, {lm.dtype}); "
              f"{counts['memories']} memories of {counts['owners']} owner(s) in {args.memory_dir}"
              + ("; API keys required" if keys.enabled else "")
              + (f"; memories served in {server.store.dtype} (not exact)"
                 if server.store.dtype not in (None, torch.float32) else "")
              + (f"; removed {server.store.swept} temporary file(s) a killed server left" if server.store.swept
                 else ""), flush=True)
        if args.check:
            server.close()
            return 0
        _serve(server, sock, args.drain_timeout)
    finally:
        sock.close()
    print("locas serve: stopped (a job that was still running is recorded as interrupted)", flush=True)
    return 0


def _serve(server, sock, drain_timeout: float) -> None:
    """uvicorn until SIGTERM or Ctrl-C; then drain: new requests get 503 while running ones finish (up to
    ``drain_timeout``), what still runs ends with an error event, jobs are recorded as interrupted. A second
    signal stops at once."""
    import threading

    import uvicorn

    from ...serve.app import create_app
    from ...serve.http import uvicorn_config

    class Draining(uvicorn.Server):
        def handle_exit(self, sig, frame):
            if server.draining.is_set():  # a second signal: stop now
                return super().handle_exit(sig, frame)
            print(f"locas serve: draining (up to {drain_timeout:g} s; new requests get 503)", flush=True)
            threading.Thread(target=self.drain, args=(sig, frame), name="locas-drain", daemon=True).start()

        def drain(self, sig, frame):
            done = server.drain(drain_timeout)
            server.batcher.close()  # rows still running end with an error event before the sockets close
            if not done:
                print("locas serve: the drain timed out; unfinished requests were ended with an error", flush=True)
            super().handle_exit(sig, frame)

    config = uvicorn_config(create_app(server), head_timeout_s=server.limits.head_timeout_s)
    try:
        Draining(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the signal it stopped on once it has stopped: the stop is already clean
    finally:
        server.close()


def serving_dtype(name: str, lm):
    """``--memory-dtype`` as a torch dtype on ``lm`` (``model``: the model's own)."""
    import torch

    return lm.dtype if name == "model" else getattr(torch, name)
