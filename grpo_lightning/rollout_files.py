"""The files of a run's rollout records: the folder and file names that the writer (:mod:`grpo_lightning.rollout_log`),
the browser (:mod:`grpo_lightning.report`) and a resumed run (which drops the files past its checkpoint) share.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: The folder under a run's log folder that holds its rollout records.
ROLLOUTS_DIR = "rollouts"
#: The name of a step's rollout file in that folder (``step=N.jsonl``), N captured.
ROLLOUT_FILE = r"step=(\d+)\.jsonl"


def rollout_file(log_dir: str | os.PathLike, step: int) -> Path:
    """The rollout file of step ``step`` of the run logging to ``log_dir``."""
    return Path(log_dir, ROLLOUTS_DIR, f"step={step}.jsonl")


def drop_rollouts_from(log_dir: str | os.PathLike, step: int) -> list[Path]:
    """Delete a run's rollout files of step ``step`` and later: a run resumed from the checkpoint of step ``step``
    writes them again, and until it does, none of the steps a killed run sampled past its checkpoint should remain
    (the browser would show a branch the resumed run did not take).

    Returns:
        The files deleted.
    """
    folder = Path(log_dir, ROLLOUTS_DIR)
    if not folder.is_dir():
        return []
    dropped = []
    for path in folder.iterdir():
        match = re.fullmatch(ROLLOUT_FILE + r"(\.tmp-\d+)?", path.name)  # a write a kill cut short too
        if match and int(match.group(1)) >= step:
            path.unlink(missing_ok=True)
            dropped.append(path)
    return sorted(dropped)


__all__ = ["ROLLOUTS_DIR", "ROLLOUT_FILE", "drop_rollouts_from", "rollout_file"]
