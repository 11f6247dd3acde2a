"""One workflow at a time on a results folder, whichever checkout or working directory it is started from.

Snakemake's own lock lives in the working directory's ``.snakemake/``, so two checkouts writing to one results
folder (a shared ``results_dir``, or ``-d`` to the same place) would run the same jobs at once. The Snakefile
(workflow/rules/common.smk) takes ``<results_dir>/.dwakd.lock`` with ``fcntl.flock`` before it writes anything
there and holds it until the Snakemake process ends (the kernel releases it on any exit, SIGKILL included: a lock
is never left stale). The file names its holder (process, host, checkout, working directory, command, start
time), which a second workflow prints when it refuses to start. Torch-free, standard library only.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_NAME = ".dwakd.lock"

_HELD: dict[str, int] = {}  # results folder -> the open descriptor that holds its lock (this process)


class ResultsLocked(RuntimeError):
    """Another process holds the results folder's lock; the message names it."""


def holder_of(path: Path) -> str:
    """The holder recorded in a lock file, in words."""
    try:
        h = json.loads(path.read_text())
        cmd = " ".join(h.get("argv") or [])
        return (f"pid {h.get('pid')} on {h.get('host')}, started {h.get('started')}, checkout {h.get('checkout')}, "
                f"working directory {h.get('cwd')}" + (f": {cmd[:200]}" if cmd else ""))
    except (OSError, ValueError):
        return "a process that has not yet written its name"


def _try_lock(results_dir: Path) -> tuple[int | None, Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None, path
    return fd, path


def acquire(results_dir: str | os.PathLike, checkout: str | os.PathLike) -> Path:
    """Lock ``results_dir`` for this process (until it exits) and record this process as the holder; raise
    ``ResultsLocked`` naming the holder when another process has it. Re-entrant within one process."""
    results_dir = Path(results_dir)
    key = str(results_dir.resolve())
    if key in _HELD:
        return results_dir / LOCK_NAME
    fd, path = _try_lock(results_dir)
    if fd is None:
        raise ResultsLocked(f"{results_dir}: in use by another workflow ({holder_of(path)}); two workflows on one "
                            f"results folder would run the same jobs at once: wait for it to finish or stop it "
                            f"(the lock, {path}, is released when that process ends)")
    info = {"pid": os.getpid(), "host": socket.gethostname(), "checkout": str(Path(checkout).resolve()),
            "cwd": os.getcwd(), "argv": sys.argv, "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    _HELD[key] = fd
    return path


def in_use(results_dir: str | os.PathLike) -> str | None:
    """The holder of ``results_dir``'s lock in words when another process holds it, else None (nothing is
    kept locked: for read-only commands such as a dry run)."""
    results_dir = Path(results_dir)
    if str(results_dir.resolve()) in _HELD or not (results_dir / LOCK_NAME).exists():
        return None
    fd, path = _try_lock(results_dir)
    if fd is None:
        return holder_of(path)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    return None


def release(results_dir: str | os.PathLike) -> None:
    """Give the lock back before the process ends (tests)."""
    fd = _HELD.pop(str(Path(results_dir).resolve()), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
