"""One run per folder: an exclusive lock on `{train.out_dir}/.ibtpo.lock` while a Trainer uses it.

Two trainings launched into one `out_dir` used to mix their files (one run's metrics, the other's
checkpoint). `RunLock(out_dir).acquire()` takes an exclusive `fcntl.flock` on the lock file and
writes its holder into it ("pid=N host=H"); another process that tries gets `RunLockedError`
naming the holder's pid and host. The operating system drops the lock when its holder exits,
however it ends (SIGKILL included), so a lock file left by a dead process is taken over without
a word. The file is never deleted: deleting it would let two processes lock two different files.
Within one process the folder may be opened again (a second Trainer of the same run, e.g. a
resume in a notebook): the lock keeps other processes out, not the holder. The lock lives as long
as the `RunLock` (the Trainer) or until `release()`. Where `fcntl` is missing (Windows) nothing
is locked.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here
    fcntl = None

LOCK_FILE = ".ibtpo.lock"


class RunLockedError(ValueError):
    """The run folder is locked by another live process (the CLI exits with status 2)."""


def holder_text() -> str:
    return f"pid={os.getpid()} host={socket.gethostname()}"


def parse_holder(text: str) -> dict[str, str]:
    """{"pid": ..., "host": ...} of a lock file's text (missing fields left out)."""
    return dict(part.split("=", 1) for part in text.split() if "=" in part)


class RunLock:
    """An exclusive lock on one run folder (see the module docstring)."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_FILE
        self._file = None

    def acquire(self) -> "RunLock":
        """Take the lock (creating `out_dir`); RunLockedError when another process holds it."""
        if fcntl is None:
            return self
        self.out_dir.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = parse_holder(f.read())
            f.close()
            if holder.get("pid") == str(os.getpid()) and holder.get("host") == socket.gethostname():
                return self  # this process holds it already (an earlier Trainer of this run)
            raise RunLockedError(locked_message(self.out_dir, self.path, holder)) from None
        f.truncate(0)
        f.write(holder_text() + "\n")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        """Drop the lock (the file stays)."""
        if self._file is not None:
            self._file.close()  # closing the file releases the flock
            self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None


def locked_message(out_dir: Path, path: Path, holder: dict[str, str]) -> str:
    who = (f"process {holder['pid']} on {holder.get('host', 'an unknown host')}"
           if "pid" in holder else "another process")
    return (f"train.out_dir={str(out_dir)!r} is in use: {who} is training into it (it holds "
            f"{path}); wait for it to end or stop it, or choose another train.out_dir")
