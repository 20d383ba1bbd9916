"""One run per log folder: a run holds a lock in its version folder for its whole life.

Two runs writing into one version folder (started at the same moment, so both numbered ``version_0``; or a resume
into a folder whose run is still going) mix their TensorBoard events into one curve, overwrite each other's rollout
files and checkpoints, and leave a ``last.ckpt`` that belongs to the other. :class:`RunLock` makes the second one
stop at start-up with a message naming the process that holds the folder.

The lock is an advisory ``flock`` on ``<version folder>/.run.lock``, which the kernel releases whenever the holding
process ends, killed with ``kill -9`` included: a stale lock cannot outlive its process (forked children, such as
dataloader workers, close their copies of the file). The first process of a run takes it, before the Trainer starts
the others or, launched by ``torchrun``, while they wait for it: a refused run's first process exits with status 2,
and ``torchrun`` (or ``srun --kill-on-bad-exit``) ends the others; a launcher that does not leaves them waiting until
the process group's time-out. Where the file system has
no ``flock`` (some network file systems), the file's recorded process id is checked instead: a holder on this
machine that is no longer running is taken over. The file itself stays (empty of meaning once unlocked); removing it
would let a third process lock a new file while a second still holds the old one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from pathlib import Path

from grpo_lightning.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: the process-id check alone
    fcntl = None  # type: ignore[assignment]

#: The lock file's name in a version folder.
LOCK_NAME = ".run.lock"

#: The descriptors this process holds folder locks with. A forked child (a dataloader worker) closes its copies: a
#: copy would keep the lock after this process is killed, until the orphaned child ends.
_HELD: set[int] = set()


def _close_copies_in_child() -> None:
    for descriptor in _HELD:
        with contextlib.suppress(OSError):
            os.close(descriptor)  # the child's copy only: the parent's lock stays
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_copies_in_child)


class RunFolderBusy(UserError):
    """Another running process holds the log folder."""


class RunLock:
    """The lock of one version folder, held by this process from :meth:`acquire` to :meth:`release` (or its end).

    Args:
        folder: the run's version folder (created if missing).
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._descriptor: int | None = None

    @property
    def held(self) -> bool:
        return self._descriptor is not None

    def acquire(self) -> RunLock:
        """Take the folder for this process.

        Raises:
            RunFolderBusy: another running process holds it; the message names its process id, machine and start.
        """
        if self.held:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not self._lock(descriptor):
                raise RunFolderBusy(self._busy_message(_read_holder(descriptor)))
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{os.getpid()} {socket.gethostname()} {int(time.time())}\n".encode(), 0)
        except BaseException:
            os.close(descriptor)
            raise
        self._descriptor = descriptor
        _HELD.add(descriptor)
        return self

    def release(self) -> None:
        """Give the folder up; nothing happens when not held."""
        descriptor, self._descriptor = self._descriptor, None
        if descriptor is None:
            return
        _HELD.discard(descriptor)
        with contextlib.suppress(OSError):
            os.ftruncate(descriptor, 0)  # no holder recorded: the process-id check finds the folder free too
            if fcntl is not None:
                fcntl.flock(descriptor, fcntl.LOCK_UN)  # also where a child forked before still holds a copy
        os.close(descriptor)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _lock(self, descriptor: int) -> bool:
        if fcntl is not None:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False
            except OSError as err:
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
        holder = _read_holder(descriptor)
        return holder is None or not holder.running_here()

    def _busy_message(self, holder: _Holder | None) -> str:
        who = "another process" if holder is None else holder.describe()
        return (
            f"{self.folder} is the log folder of a run that is still going ({who}): two runs in one folder mix their "
            "curves, rollouts and checkpoints. Wait for it to end or stop it, or give this run its own folder "
            "(another trainer.logger.init_args.name or version)."
        )


class _Holder:
    def __init__(self, pid: int, host: str, since: int | None):
        self.pid, self.host, self.since = pid, host, since

    def running_here(self) -> bool:
        """Whether the holder is a live process of this machine (one elsewhere counts as running)."""
        if self.host != socket.gethostname():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def describe(self) -> str:
        started = f", since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.since))}" if self.since else ""
        return f"PID {self.pid} on {self.host}{started}"


def _read_holder(descriptor: int) -> _Holder | None:
    """The process recorded in the lock file, or None when it records none."""
    try:
        fields = os.pread(descriptor, 256, 0).decode(errors="replace").split()
        return _Holder(int(fields[0]), fields[1], int(fields[2]) if len(fields) > 2 else None)
    except (OSError, ValueError, IndexError):
        return None


__all__ = ["LOCK_NAME", "RunFolderBusy", "RunLock"]
