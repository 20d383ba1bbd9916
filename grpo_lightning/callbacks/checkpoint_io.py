"""Checkpoint files that are complete or absent, whenever the process writing them dies.

Writing a file checkpoint, Lightning 2.6's ``TorchCheckpointIO`` serialises the whole checkpoint into memory, writes
it to a ``tempfile.mkstemp()`` file in the system temp folder (``$TMPDIR``) and ``shutil.move``-s it into place. When
that folder is on another file system than the checkpoints (``/tmp`` on a local disk or tmpfs, logs on a network file
system), the move is a copy into the final name, and a process killed during it leaves a truncated ``last.ckpt``.
Killed writes also leave their temp files behind in ``$TMPDIR``, and nothing is fsync-ed. :class:`AtomicCheckpointIO`
writes ``<path>.tmp-<pid>`` beside the destination, fsyncs it, ``os.replace``-s it over the destination (atomic on a
POSIX file system) and removes the temp files of writers that died. Checked in ``tests/test_checkpoints.py``.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.types import _PATH
from typing_extensions import override

__all__ = ["AtomicCheckpointIO", "remove_stale_temp_files"]


_TEMP_SUFFIX = re.compile(r"\.tmp-(\d+)$")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint files that are complete or absent: never truncated, whenever the writing process dies.

    The checkpoint is streamed to ``<path>.tmp-<pid>`` in the destination's folder, flushed to disk (``fsync``),
    and renamed over ``path`` with ``os.replace``, which is atomic on a POSIX file system: a reader, or a run
    resumed after a kill, sees the previous file or the new one. The folder is fsync-ed after the rename so the
    new name survives a power cut. Temp files left by writers that died (their process id is no longer running
    on this machine) are removed at the next save in the same folder. Remote paths (``s3://``...) are written as
    Lightning does, as a single object upload.

    Use it as a Trainer plugin: ``Trainer(plugins=[AtomicCheckpointIO()])``, or in YAML
    ``trainer.plugins: [{class_path: grpo_lightning.callbacks.AtomicCheckpointIO}]``. DeepSpeed writes its
    checkpoints itself and does not call it (see :class:`~grpo_lightning.callbacks.StepCheckpoint`
    ``save_last="link"``).

    Args:
        fsync: flush each checkpoint and its folder entry to the disk before reporting it saved. Off, a kill
            still cannot leave a truncated file; a power cut can.
    """

    def __init__(self, fsync: bool = True):
        super().__init__()
        self.fsync = fsync

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no `storage_options`; remove them from the save call.")
        if not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path)
            return
        path = Path(str(path).removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(path.parent)
        temp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        try:
            with open(temp, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                if self.fsync:
                    os.fsync(file.fileno())
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        if self.fsync:
            _fsync_folder(path.parent)


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``*.tmp-<pid>`` files in ``folder`` whose writer is no longer running on this machine.

    Returns:
        The files removed.
    """
    removed = []
    for entry in Path(folder).iterdir():
        match = _TEMP_SUFFIX.search(entry.name)
        if match and int(match.group(1)) != os.getpid() and not _process_alive(int(match.group(1))):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _process_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # no cheap check: keep the file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _fsync_folder(folder: Path) -> None:
    if os.name != "posix":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
