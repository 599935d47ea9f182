"""One run per directory: ``model_dir/.lock`` names the process using it.

Two processes on one run directory would prune each other's in-flight checkpoints. The lock is a
file created exclusively, holding ``host pid``; a lock whose process is gone (killed with -9) is
taken over, so a resume is never blocked by the run it resumes; so is a lock file that does not hold
``host pid`` (damaged).
"""
from __future__ import annotations

import atexit
import os
import socket

from ssl_tf.errors import SSLTFError

NAME = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's live process
        return True
    return True


def acquire(model_dir: str) -> str:
    """Take ``model_dir``'s lock for this process (again, if it holds it already) or raise a one-line error
    naming the process that holds it. Released when the process exits."""
    path = os.path.join(model_dir, NAME)
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(path) as f:
                    holder = f.read().strip()
            except OSError:
                continue                                   # released meanwhile: try again
            host, _, pid = holder.partition(" ")
            if holder == me:
                return path
            damaged = not (host and pid.isdigit())           # not a lock this code wrote: none to respect
            if damaged or (host == socket.gethostname() and not _alive(int(pid))):
                try:
                    os.remove(path)                        # a stale lock of a killed run
                except FileNotFoundError:
                    pass
                continue
            raise SSLTFError(f"--model_dir={model_dir}: in use by process {pid} on {host or 'an unknown host'} "
                             f"({path}); wait for it, use another --model_dir, or delete the lock file if that "
                             "run is gone") from None
        with os.fdopen(fd, "w") as f:
            f.write(me + "\n")
        atexit.register(release, path, me)
        return path
    raise SSLTFError(f"--model_dir={model_dir}: cannot take the lock {path}")


def release(path: str, me: str | None = None) -> None:
    """Remove the lock if this process holds it."""
    me = me or f"{socket.gethostname()} {os.getpid()}"
    try:
        with open(path) as f:
            if f.read().strip() == me:
                os.remove(path)
    except OSError:
        pass
