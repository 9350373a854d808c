"""Faults in real processes: SIGKILL at random moments, Ctrl-C and SIGTERM, two processes on one output."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from fault_trials import ENV, locas, run_trials, setup

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return setup(tmp_path_factory.mktemp("faults"))


def _default_sigint() -> None:
    """Child setup: Ctrl-C handled as usual even when this test runs as a background job (which ignores SIGINT, and
    a child would inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _started(proc: subprocess.Popen, timeout: float = 120) -> str:
    """Wait until the command is at work (its first progress bar on stderr); returns what it printed."""
    seen, t0 = b"", time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        chunk = proc.stderr.read1(4096) if hasattr(proc.stderr, "read1") else proc.stderr.read(1)
        seen += chunk
        if b"%|" in seen or proc.poll() is not None:
            return seen.decode(errors="replace")
    raise AssertionError("the command never started its work")


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_is_one_line_and_writes_nothing(world, tmp_path, sig, code):
    out = tmp_path / "m.locas"
    argv = ["memorize", world["text"], "-o", out, "--objective", "ntp", "--window-size", 16, "--memory-width", 4,
            "--epochs", 400, *world["common"]]
    proc = subprocess.Popen(locas(*argv), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=_default_sigint)
    _started(proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    lines = [ln for ln in err.decode().replace("\r", "\n").splitlines() if ln.strip() and "%|" not in ln]
    assert proc.returncode == code, err[-500:]
    assert lines == ["interrupted: nothing written (outputs are written whole or not at all)"], lines
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def test_a_run_directory_takes_one_process_at_a_time(world, tmp_path):
    run = tmp_path / "run"
    long_run = [200 if prev == "--epochs" else a for prev, a in zip([None, *world["pg19"]], world["pg19"])]
    first = subprocess.Popen(locas(*long_run, "-o", run), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             preexec_fn=_default_sigint)
    try:
        _started(first)
        second = subprocess.run(locas(*long_run, "-o", run, "--resume"), env=ENV, capture_output=True, text=True,
                                timeout=300)
    finally:
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=120)
    assert second.returncode == 2
    assert second.stderr.strip().splitlines() == [
        f"error: another locas process is running in '{run}'; wait for it to finish, or choose another directory"]
    assert first.returncode == 130 and "rerun with --resume" in err.decode()  # its checkpoints are kept


def test_two_processes_writing_one_memory_file_leave_one_valid_file(world, tmp_path):
    from fault_trials import _valid_memory

    out = tmp_path / "m.locas"
    argv = ["memorize", world["text"], "-o", out, "--objective", "ntp", "--window-size", 16, "--memory-width", 4,
            "--epochs", 3, *world["common"]]
    procs = [subprocess.Popen(locas(*argv, "--seed", str(k)), env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for k in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert _valid_memory(out) and not list(tmp_path.glob(".*.tmp"))


def test_sigkill_leaves_old_or_new_artefacts_and_resume_is_exact(world):
    report = run_trials(trials=3, seed=3, progress=lambda _: None, world=world)
    assert report["trials"] == 3 and report["broken"] == 0, report["rows"]
