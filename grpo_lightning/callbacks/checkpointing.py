"""Step checkpoints that resume exactly where a straight run would be, and the run names their folders may have.

What Lightning 2.6's ``ModelCheckpoint`` does by itself, and what :class:`StepCheckpoint` adds (each point is checked
in ``tests/test_checkpoints.py``):

* ``ModelCheckpoint(every_n_train_steps=N, save_last=True)`` saves every N steps but not the final step when the
  run length is not a multiple of N (``last.ckpt`` is then up to N-1 steps old). :class:`StepCheckpoint` also
  saves at the end of training. With manual optimisation (GRPOModule's) Lightning warns at every periodic save
  that the checkpoint holds the weights after the optimizer step; that is what a resumed run needs, and the
  warning is silenced.
* A checkpoint that Lightning writes at the end of training (``on_train_end``) records the epoch as finished
  even when ``max_steps`` stopped it half-way: resumed, the run would start the next epoch's order. And
  ``ModelCheckpoint(save_on_exception=True)`` saves the state of the moment of the failure: half a step (the
  random streams and the data already drawn for it, possibly some weights updated). :class:`StepCheckpoint`
  keeps, in memory, the loop state (data position included) and random states of the end of the last completed
  step, and writes those into both: every checkpoint it writes resumes exactly where a straight run would be.
  It saves on any exception in training, Ctrl-C included, unless an optimizer step had begun (then the weights
  are no longer those of a step end) or several processes train (saving is collective; see
  :meth:`StepCheckpoint.on_exception`).
* ``fit(ckpt_path="last")`` looks for ``last.ckpt`` only in the checkpoint folder of the *new* run, which with
  an automatically numbered logger version (``version_1`` after ``version_0``) is always empty: Lightning warns
  "there is no last checkpoint available", and trains from scratch. :class:`StepCheckpoint` also looks in the
  other versions of the same run name and resumes the most recent ``last.ckpt`` (the resumed run's logs follow it
  there: :mod:`grpo_lightning.callbacks.resume`).
* ``save_last="link"`` replaces ``last.ckpt`` by removing it and then creating a symlink; here the new link is
  made under a temporary name and renamed over the old one, so ``last.ckpt`` always exists. This is the choice
  for DeepSpeed, whose checkpoints are folders written in place by DeepSpeed itself (no ``CheckpointIO``): a
  ``last.ckpt`` copy would be overwritten file by file, while a link switches only once the new step folder
  is complete.
* ``ModelCheckpoint`` does not overwrite a file it did not write in this process: a resumed run that goes on in its
  checkpoint's folder saves ``last-v1.ckpt``, then ``last-v2.ckpt``, while ``last.ckpt`` stays at the first part's
  last step, and ``--ckpt_path .../last.ckpt`` silently goes back there. :class:`StepCheckpoint` keeps one name per
  checkpoint: ``last.ckpt`` is always the newest checkpoint of its run, and a step saved again after a resume
  (the steps between the last checkpoint and a kill) replaces its earlier file.
* A run name with ``/`` (``TensorBoardLogger(name="internvl/lr1e-6")``) is a nested folder under ``save_dir``;
  version numbering and the lookup of ``last.ckpt`` work in it. Names that are absolute, hold ``..`` or ``.``,
  or empty parts (``a//b``, ``a/``) would put the run elsewhere or alias another one, and are refused at
  start-up by :func:`check_run_name`.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from typing_extensions import override

from grpo_lightning.errors import ConfigError

__all__ = ["StepCheckpoint", "check_run_name"]


def check_run_name(name: str | None) -> None:
    """Refuse a run name that is not a plain relative folder path (``/`` between non-empty folder names).

    ``internvl/lr1e-6`` is fine: a nested folder under the logger's ``save_dir``. An absolute name would move the
    run out of ``save_dir`` (``os.path.join`` drops ``save_dir``), ``..`` climbs out of it, and ``.`` or empty
    parts (``a//b``, ``a/``) make a second spelling of another run's folder, which then shares its version
    numbers and its ``last.ckpt``.

    Args:
        name: the logger's ``name`` (None or empty: no run folder, allowed).

    Raises:
        ConfigError: the name is not allowed; the message gives one that is.
    """
    if not name:
        return
    parts = name.split("/")
    if all(part not in ("", ".", "..") for part in parts):
        return
    suggestion = "/".join(part for part in parts if part not in ("", ".", "..")) or "run"
    raise ConfigError(
        f"The run name {name!r} is not a relative folder path: a run name is folder names separated by single '/', "
        "none of them '.' or '..', with no '/' at either end, so that the run stays in its own folder under the "
        f"logger's save_dir. Set the logger's name (trainer.logger.init_args.name) to {suggestion!r}, for example."
    )


@dataclass(frozen=True)
class _StepEnd:
    """What a checkpoint needs besides weights and optimizer states, as it was at the end of a training step."""

    global_step: int
    fit_loop: dict[str, Any]  # the loops' progress and the training dataloader's position
    rng_states: dict[str, Any]


class StepCheckpoint(ModelCheckpoint):
    """A checkpoint every N optimizer steps, at the end of training and when training fails; ``last.ckpt`` beside.

    The files go to the run's log folder, ``<save_dir>/<name>/<version>/checkpoints/`` (``step=500.ckpt``...,
    ``last.ckpt``), unless ``dirpath`` says otherwise. A run resumes only when asked:
    ``python -m grpo_lightning fit ... --ckpt_path last`` continues from the most recent ``last.ckpt`` among the
    versions of the same run name, ``--ckpt_path PATH`` from a file; the command line then logs into the version
    folder of that checkpoint again (see :func:`~grpo_lightning.callbacks.continue_logger_version`).

    Every checkpoint holds the state of the end of a completed step (loops, data position, random streams), so
    that resuming from it gives the weights a straight run would have: the one written when ``max_steps`` ends
    training mid-epoch, and the one written when training stops on an exception (see :meth:`on_exception`).

    Args:
        every_n_train_steps: save every this many optimizer steps (``trainer.global_step``: with ``num_iterations``
            > 1 one batch makes several steps); 0 saves only at the end of training.
        save_top_k: how many step checkpoints to keep: -1 all, 1 only the latest, 0 none (only ``last.ckpt``).
        save_last: keep ``last.ckpt``: True writes it as a file (a second copy of the latest checkpoint),
            ``"link"`` as a symbolic link to the latest step checkpoint (no copy; the choice with DeepSpeed,
            whose checkpoints are folders; needs ``save_top_k`` -1).
        dirpath: where to save (None: the run's log folder, as above).
        filename: name pattern of the step checkpoints (``{step}`` gives ``step=500.ckpt``).
        save_weights_only: leave optimizer, scheduler and loop states out (such a checkpoint cannot resume a run).
    """

    def __init__(
        self,
        every_n_train_steps: int = 500,
        save_top_k: int = -1,
        save_last: bool | Literal["link"] = True,
        dirpath: str | None = None,
        filename: str = "{step}",
        save_weights_only: bool = False,
    ):
        if every_n_train_steps < 0:
            raise ConfigError(f"every_n_train_steps must be 0 (only at the end) or more, not {every_n_train_steps}.")
        if save_top_k not in (-1, 0, 1):
            raise ConfigError(f"save_top_k must be -1 (keep all), 0 or 1 (keep the latest), not {save_top_k}.")
        if save_last == "link" and save_top_k == 1:
            raise ConfigError(
                "save_last='link' with save_top_k=1 deletes the step checkpoint that last.ckpt points to before "
                "linking the new one, so a kill in between leaves no last.ckpt; use save_top_k=-1 with 'link', "
                "or save_last=True."
            )
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            save_last=save_last,
            save_top_k=save_top_k,
            every_n_train_steps=every_n_train_steps,
            save_weights_only=save_weights_only,
            # One name per checkpoint: last.ckpt is replaced, never joined by last-v1.ckpt (see the module docstring).
            enable_version_counter=False,
        )
        self._in_run_folder = dirpath is None
        #: Set by :func:`~grpo_lightning.callbacks.continue_logger_version`: this run continues an earlier one's log
        #: folder.
        self.continues_run = False
        self._step_end: _StepEnd | None = None  # the state of the end of the last completed step of this run
        self._optimizer_step_begun = False  # in the step after _step_end
        self._restoring: _StepEnd | None = None  # set while a checkpoint of _step_end is written

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for logger in trainer.loggers:
            check_run_name(logger.name)
        with warnings.catch_warnings():
            if self._in_run_folder and self.continues_run:  # its own folder (continue_logger_version)
                warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
            super().setup(trainer, pl_module, stage)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._step_end, self._optimizer_step_begun = None, False

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        # The state of a step end is what a periodic checkpoint saves here; kept for the checkpoints written later
        # (end of training, failure). A few kB of loop counters and random states, against a step of seconds.
        self._step_end = _StepEnd(
            trainer.global_step, copy.deepcopy(trainer.fit_loop.state_dict()), _collect_rng_states()
        )
        self._optimizer_step_begun = False
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
            super().on_train_batch_end(trainer, pl_module, *args, **kwargs)

    @override
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self._optimizer_step_begun = True  # from here until the step ends, the weights are not a step end's

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning saves only at multiples of every_n_train_steps: the steps after the last multiple would be lost.
        # At this point Lightning counts the epoch as finished (max_steps stopped it half-way), so the checkpoint
        # gets the loop state of the last step's end: resumed, the run continues the same epoch's order.
        step_end = self._step_end
        if step_end is not None and not self._should_skip_saving_checkpoint(trainer):
            self._save_step_end(trainer, step_end)
        super().on_train_end(trainer, pl_module)

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """Save the last completed step when training stops on an exception (Ctrl-C, SIGTERM included).

        The checkpoint holds the weights, optimizer and loop states and random streams of the end of the last
        completed step, so ``--ckpt_path last``, once the cause is fixed, trains on as the run would have. Nothing
        is saved, and the message says why, when:

        * an optimizer step had begun in the failing step: some weights or optimizer moments may be updated, and
          they no longer match any step end; resume from the last periodic checkpoint;
        * several processes train (DDP, DeepSpeed): saving is collective, and the exception may have stopped one
          process only while the others wait in a collective of the step; the run stops as Lightning stops it, and
          the last periodic checkpoint is the one to resume.

        A message (Lightning's log, and a note on the exception) names the checkpoint and how to resume. A failure
        during a validation run saves the step before it; the resumed run trains on from there and does not repeat
        that validation (the next one comes at its interval).
        """
        step_end = self._step_end
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking or step_end is None:
            return
        saved_before = (self.last_model_path if self.save_last else None) or self._last_checkpoint_saved or None
        resume = "--ckpt_path last" if self.save_last else "--ckpt_path {}"
        fix = "" if isinstance(exception, KeyboardInterrupt) else "fix the cause and "
        if trainer.world_size > 1:
            message = (
                f"Training stopped ({type(exception).__name__}); no checkpoint was saved on the way out: with "
                f"{trainer.world_size} processes saving is collective, and the others may be waiting in this step."
            )
        elif self._optimizer_step_begun:
            message = (
                f"Training stopped ({type(exception).__name__}) after an optimizer step had begun, so the weights are "
                f"no longer those of step {step_end.global_step}; no checkpoint was saved on the way out."
            )
        else:
            if self._last_global_step_saved != step_end.global_step:
                try:
                    self._save_step_end(trainer, step_end)
                except Exception as error:  # the failure being reported is the original one
                    rank_zero_warn(f"Saving the step={step_end.global_step} checkpoint failed: {error!r}")
            path = self.last_model_path if self.save_last else self._last_checkpoint_saved
            if self._last_global_step_saved == step_end.global_step and path:
                message = (
                    f"Training stopped ({type(exception).__name__}): saved step={step_end.global_step} checkpoint to "
                    f"{path}; {fix}resume with {resume.format(path)}."
                )
                rank_zero_info(message)
                exception.add_note(message)
                return
            message = f"Training stopped ({type(exception).__name__}); no checkpoint of step {step_end.global_step}."
        if saved_before:
            message += f" The last saved checkpoint is {saved_before}; resume with {resume.format(saved_before)}."
        rank_zero_warn(message)
        exception.add_note(message)

    @override
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._restoring is not None:
            checkpoint["loops"]["fit_loop"] = copy.deepcopy(self._restoring.fit_loop)

    def _save_step_end(self, trainer: L.Trainer, step_end: _StepEnd) -> None:
        """Save the step checkpoint and ``last.ckpt`` as they would have been saved at the end of that step."""
        with self._at_step_end(step_end):
            monitor_candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, monitor_candidates)
            self._save_last_checkpoint(trainer, monitor_candidates)

    @contextlib.contextmanager
    def _at_step_end(self, step_end: _StepEnd) -> Iterator[None]:
        # The loop state goes in through on_save_checkpoint; the random streams are set back for the time of the
        # save, so that the module (GRPOModule.on_save_checkpoint) saves those of the step end, then put forward.
        now = _collect_rng_states()
        _set_rng_states(step_end.rng_states)
        self._restoring = step_end
        try:
            yield
        finally:
            self._restoring = None
            _set_rng_states(now)

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # A run resumed from another folder's checkpoint (its own version folder under another run name, or a
        # checkpoint moved elsewhere) writes its own files: Lightning warns that the previous folder's best/last paths
        # are not carried over, which is what we want (the previous run's files stay untouched).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The dirpath has changed from")
            super().load_state_dict(state_dict)

    def find_last_checkpoint(self, trainer: L.Trainer) -> str | None:
        """The checkpoint that ``fit(ckpt_path="last")`` resumes: the most recently written ``last.ckpt`` of this run
        name (all its versions), or None when there is none (then Lightning warns and trains from scratch)."""
        found = [path for path in self._find_last_checkpoints(trainer) if os.path.exists(path)]
        return max(found, key=os.path.getmtime, default=None)

    @override
    def _find_last_checkpoints(self, trainer: L.Trainer) -> set[str]:
        run_folder = self._run_folder(trainer)
        if run_folder is None:
            return super()._find_last_checkpoints(trainer)
        # Not Lightning's look in trainer.log_dir: reading it makes the logger pick its version, which
        # continue_logger_version may still have to set. That folder is one of the versions scanned here.
        found: set[str] = set()
        if run_folder.is_dir():
            last = re.compile(rf"^{self.CHECKPOINT_NAME_LAST}(-v\d+)?{re.escape(self.FILE_EXTENSION)}$")
            for version in run_folder.iterdir():
                checkpoints = version / "checkpoints"
                if checkpoints.is_dir():
                    found |= {os.path.normpath(p) for p in checkpoints.iterdir() if last.match(p.name) and p.exists()}
        return found

    def _run_folder(self, trainer: L.Trainer) -> Path | None:
        """``<save_dir>/<name>``, whose sub-folders are the versions of this run; None when not that layout."""
        if not self._in_run_folder or not trainer.loggers:
            return None
        logger = trainer.loggers[0]
        save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
        if not _is_local_file_protocol(save_dir):
            return None
        return Path(save_dir, str(logger.name or ""))

    @staticmethod
    @override
    def _link_checkpoint(trainer: L.Trainer, filepath: str, linkpath: str) -> None:
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            if os.path.isdir(linkpath) and not os.path.islink(linkpath):
                shutil.rmtree(linkpath)  # a real folder from save_last=True under DeepSpeed; cannot be renamed over
            temp = f"{linkpath}.tmp-{os.getpid()}"
            if os.path.lexists(temp):
                os.remove(temp)
            try:
                os.symlink(os.path.relpath(filepath, os.path.dirname(linkpath)), temp)
            except OSError:  # no symlinks (Windows without the privilege): a copy, as Lightning does
                copy = shutil.copytree if os.path.isdir(filepath) else shutil.copyfile
                copy(filepath, temp)
            os.replace(temp, linkpath)
        trainer.strategy.barrier()
