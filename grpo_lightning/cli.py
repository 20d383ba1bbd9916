"""The command line: ``python -m grpo_lightning fit|validate|test|predict --config CONFIG.yaml``.

A LightningCLI over :class:`GRPOModule` and :class:`ViVQAXDataModule`: the constructors' typed
signatures and docstrings are the configuration schema, so ``--help`` and ``fit --print_config`` show
every option. Configs live in ``configs/`` as commented YAML and ship with the package: ``--config NAME.yaml``
that is not a file here is the shipped config of that name (e.g. ``--config internvl.yaml``).

What the command line adds to LightningCLI:

- ``model.rewards.kwargs.explanation.corpus_file`` defaults to ``data.train_file`` (CIDEr-D's document
  frequencies come from the training split): one path serves both, and ``--print_config`` shows it.
- With ``--ckpt_path PATH`` (validate, test, predict, fit), the checkpoint's hyperparameters fill in what the
  command line and configs leave unset; what they set wins, except the LoRA structure (:data:`MODEL_IDENTITY`),
  which always comes from the checkpoint because its weights need it. ``fit`` goes on in the checkpoint's version
  folder; ``validate``, ``test`` and ``predict`` log inside it, ``<run>/version_N/<subcommand>/version_K``, when the
  logger's run name is the checkpoint's, so the run name's versions stay training runs.
- A user error (bad data, config value, reward, path; :class:`~grpo_lightning.errors.UserError`) prints one
  message and exits with status 2; ``GRPO_LIGHTNING_TRACEBACK=1`` shows the traceback too. A parse error
  prints the error first, with the closest option for a misspelt one, instead of the full usage.
- The training progress bar counts optimizer steps of the run (:class:`~grpo_lightning.progress.StepProgressBar`).
"""

from __future__ import annotations

import difflib
import importlib.resources
import os
import re
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml
from jsonargparse import Namespace
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.trainer import Trainer

from grpo_lightning import quiet_deepspeed_without_cuda
from grpo_lightning.callbacks import (
    check_run_name,
    continue_logger_version,
    forget_logs_past_checkpoint,
    log_beside_checkpoint,
    resolve_last_checkpoint,
)
from grpo_lightning.checkpoint_files import read_checkpoint
from grpo_lightning.config import regrouped
from grpo_lightning.data import ViVQAXDataModule
from grpo_lightning.errors import TRACEBACK_ENV, ConfigError, UserError, user_message
from grpo_lightning.hardware import check_hardware
from grpo_lightning.module import GRPOModule
from grpo_lightning.progress import StepProgressBar
from grpo_lightning.run_lock import RunLock
from grpo_lightning.signals import SignalExits

#: The module options a checkpoint's weights need: the LoRA structure and scale. With ``--ckpt_path`` these always
#: come from the checkpoint. Everything else (the base model's path, sampling, loss, rewards, dtype, evaluation,
#: predictions_file) may be changed; the checkpoint's value fills in what the configs and command line leave unset.
MODEL_IDENTITY = ("lora.r", "lora.alpha", "lora.target_modules")

CONFIG_FLAGS = ("--config", "-c")

#: ``--ckpt_path`` values that name no file: the Trainer looks the checkpoint up (``last``: see StepCheckpoint).
TRAINER_CHECKPOINT_NAMES = ("last", "best", "hpc", "registry")


# ------------------------------------------------------------------------------------------------ configs
def shipped_configs_dir() -> Path:
    """The folder of the configs that ship with the package (in the repository: a link to ``configs/``)."""
    return Path(str(importlib.resources.files("grpo_lightning") / "configs"))


def shipped_config(name: str) -> Path | None:
    """The shipped config called ``name`` (a bare file name such as ``internvl.yaml``), or None."""
    if Path(name).name != name:
        return None
    path = shipped_configs_dir() / name
    # os.path.isfile, not Path.is_file, which raises ENAMETOOLONG for inline YAML longer than a file name can be
    return path if os.path.isfile(path) else None


def check_yaml_syntax(path: str | os.PathLike) -> None:
    """Raise :class:`ConfigError` naming the file, line and column of a YAML syntax error."""
    try:
        yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        context = ""
        if err.context and err.context_mark is not None:
            context = f" ({err.context} at line {err.context_mark.line + 1}, column {err.context_mark.column + 1})"
        raise ConfigError(f"{where}: invalid YAML: {err.problem}{context}. Fix the syntax there.") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}. Fix the syntax there.") from None


def resolve_config(value: str) -> str:
    """A ``--config`` value as jsonargparse should get it: a file here, else the shipped config of that name.

    Values that are neither (inline YAML such as ``{trainer: {max_steps: 10}}``) are left to jsonargparse.
    """
    if os.path.isfile(value):
        check_yaml_syntax(value)
        return value
    shipped = shipped_config(value)
    if shipped is not None:
        print(
            f"--config {value}: no such file here; using the config shipped with grpo_lightning: {shipped}",
            file=sys.stderr,
        )
        check_yaml_syntax(shipped)
        return str(shipped)
    if value.endswith((".yaml", ".yml", ".json")):
        names = ", ".join(sorted(p.name for p in shipped_configs_dir().glob("*.yaml")))
        raise ConfigError(
            f"--config {value}: no such file (looked in {os.getcwd()} and among the shipped configs: {names}); "
            "give a config file's path or one of those names."
        )
    return value


def resolve_config_args(args: Sequence[str]) -> list[str]:
    """``args`` with each ``--config``/``-c`` value resolved by :func:`resolve_config`."""
    resolved = list(args)
    for index, arg in enumerate(resolved):
        flag, equals, value = arg.partition("=")
        if flag not in CONFIG_FLAGS:
            continue
        if equals:
            resolved[index] = f"{flag}={resolve_config(value)}"
        elif index + 1 < len(resolved):
            resolved[index + 1] = resolve_config(resolved[index + 1])
    return resolved


def link_reward_corpus(config: Namespace) -> Namespace:
    """Fill ``model.rewards.kwargs.explanation.corpus_file`` from ``data.train_file`` when it is not set.

    The explanation reward's CIDEr-D takes its document frequencies from the training split; declaring the
    path once keeps the two from drifting apart. ``config`` is one subcommand's namespace; configs without the
    ``explanation`` reward are left as they are.
    """
    reward_funcs = config.get("model.rewards.funcs") or ()
    train_file = config.get("data.train_file")
    if "explanation" not in reward_funcs or not train_file:
        return config
    reward_kwargs = dict(config.get("model.rewards.kwargs") or {})
    explanation = dict(reward_kwargs.get("explanation") or {})
    if explanation.get("corpus_file") is None:
        explanation["corpus_file"] = train_file
        reward_kwargs["explanation"] = explanation
        config["model.rewards.kwargs"] = reward_kwargs
    return config


# ------------------------------------------------------------------------------------------------ parser
class GRPOArgumentParser(LightningArgumentParser):
    """Prints a parse error first (with the closest option for a misspelt one), then one line of help; and
    shows linked values (:func:`link_reward_corpus`) in ``--print_config`` and the saved ``config.yaml``."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        self._logger.error(message)
        sys.stderr.write(f"error: {message}{parser.suggestion(message)}\n")
        sys.stderr.write(f"tip: `{parser.prog.replace(' [options]', '')} --help` lists every option.\n")
        self.exit(2)

    def suggestion(self, message: str) -> str:
        """``' (did you mean --model.sampling.num_generations?)'`` for an unrecognized option close to a known one."""
        unknown = re.findall(r"--[\w.]+", message.partition("unrecognized arguments:")[2])
        known = [option for option in self._option_string_actions if option.startswith("--")]
        guesses = [match for option in unknown for match in difflib.get_close_matches(option, known, n=1)]
        return f" (did you mean {', '.join(guesses)}?)" if guesses else ""

    def dump(self, cfg: Namespace, *args: Any, **kwargs: Any) -> str:
        cfg = cfg.clone()
        subcommand = cfg.get("subcommand")
        link_reward_corpus(cfg[subcommand] if subcommand and isinstance(cfg.get(subcommand), Namespace) else cfg)
        return super().dump(cfg, *args, **kwargs)


# ------------------------------------------------------------------------------------------------ checkpoints
def checkpoint_hyperparameters(ckpt_path: str | os.PathLike) -> dict[str, Any]:
    """The module's init arguments saved in a Lightning checkpoint: a file (memory-mapped: the weights stay on disk)
    or a DeepSpeed checkpoint folder (whose ``*/mp_rank_00_model_states.pt`` holds them); {} when there are none.

    Raises:
        CheckpointError: the checkpoint is missing or does not load (see ``read_checkpoint``).
    """
    hparams = dict(read_checkpoint(ckpt_path).get("hyper_parameters") or {})
    hparams.pop("_instantiator", None)
    hparams.pop("_class_path", None)
    return regrouped(hparams)


def _saved(hparams: dict[str, Any], dotted_key: str) -> bool:
    """Whether the nested ``hparams`` hold ``dotted_key`` (e.g. ``lora.r``)."""
    *groups, name = dotted_key.split(".")
    for group in groups:
        hparams = hparams.get(group)
        if not isinstance(hparams, dict):
            return False
    return name in hparams


class GRPOCLI(LightningCLI):
    """LightningCLI that lets the command line win over a checkpoint's hyperparameters, links the reward corpus
    to the training split, shows optimizer steps, holds its log folder, and checks before training what would
    otherwise fail late.

    Args:
        run_locks: where the locks of the log folders this run holds go (the caller releases them at the end; the
            process's end releases them too).
    """

    def __init__(self, *args: Any, run_locks: list[RunLock] | None = None, **kwargs: Any):
        self.run_locks = run_locks if run_locks is not None else []
        super().__init__(*args, **kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self._args = args  # parsed again over a checkpoint's hyperparameters (_parse_ckpt_path)
        self.config = parser.parse_object(args) if isinstance(args, (dict, Namespace)) else parser.parse_args(args)

    def _parse_ckpt_path(self) -> None:
        """With ``--ckpt_path PATH`` (a file, or a DeepSpeed checkpoint folder): defaults < the checkpoint's
        hyperparameters < configs and command line; then :data:`MODEL_IDENTITY` from the checkpoint.

        (LightningCLI parses the hyperparameters over the whole config instead, so that every ``--model.*``
        value given with a checkpoint was silently replaced by the one used in training.) ``--ckpt_path last`` is
        resolved by the Trainer later; the configs and command line alone then set the module's options.
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or ckpt_path in TRAINER_CHECKPOINT_NAMES or not _is_local_file_protocol(ckpt_path):
            return
        hparams = checkpoint_hyperparameters(ckpt_path)  # a missing or unreadable checkpoint stops here
        if not hparams:
            return
        from_checkpoint = self._parse_checkpoint_hparams(ckpt_path, subcommand, hparams)
        if isinstance(self._args, (dict, Namespace)):
            self.config = self.parser.parse_object(self._args, from_checkpoint)
        else:
            self.config = self.parser.parse_args(self._args, namespace=from_checkpoint)
        model, trained = self.config[subcommand]["model"], from_checkpoint[subcommand]["model"]
        for key in MODEL_IDENTITY:
            if _saved(hparams, key) and model.get(key) != trained.get(key):
                print(
                    f"--ckpt_path {ckpt_path}: model.{key} is {trained.get(key)!r} as in training, not "
                    f"{model.get(key)!r}: the checkpoint's weights need it.",
                    file=sys.stderr,
                )
                model[key] = trained.get(key)
        base = trained.get("model_name_or_path")
        if base is not None and model.get("model_name_or_path") != base:
            print(
                f"--ckpt_path {ckpt_path}: the base model is {model.get('model_name_or_path')!r} (trained from "
                f"{base!r}); it must be the same checkpoint, wherever it is now.",
                file=sys.stderr,
            )

    def _parse_checkpoint_hparams(self, ckpt_path: str, subcommand: str, hparams: dict[str, Any]) -> Namespace:
        """The checkpoint's hyperparameters as a config namespace; a :class:`ConfigError` when they do not parse."""
        exit_on_error, self.parser.exit_on_error = self.parser.exit_on_error, False
        try:
            return self.parser.parse_object({subcommand: {"model": hparams}})
        except Exception as err:  # jsonargparse's ArgumentError and the like
            raise ConfigError(
                f"--ckpt_path {ckpt_path}: the module options saved in the checkpoint do not parse with this version "
                f"of grpo_lightning ({err}); give the changed options on the command line or in a config."
            ) from None
        finally:
            self.parser.exit_on_error = exit_on_error

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        link_reward_corpus(config)
        # before the Trainer and the model are built: DeepSpeed without CUDA fails inside the Trainer's constructor
        check_hardware(config.get("trainer.strategy"), config.get("trainer.accelerator"), config.get("model.optimizer"))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer, with :class:`StepProgressBar` unless the config disables the bar or names its own."""
        config = self._get(self.config_init, "trainer", default={})
        callbacks = kwargs.pop("callbacks", config.get("callbacks")) or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(StepProgressBar())
        return super().instantiate_trainer(callbacks=callbacks, **kwargs)

    def before_fit(self) -> None:
        for logger in self.trainer.loggers:
            check_run_name(logger.name)
        given = self.config[self.subcommand].get("ckpt_path")
        ckpt_path = resolve_last_checkpoint(self.trainer, given)  # the Trainer resolves "last" to the same file
        if given == "last" and ckpt_path is None:
            raise ConfigError(
                "--ckpt_path last: this run name has no last.ckpt yet (and without a StepCheckpoint callback none "
                "is looked for); drop --ckpt_path to start a new run, or give a checkpoint's path."
            )
        # A resumed run goes on in its checkpoint's log folder: one curve per run in TensorBoard, not one per resume.
        continued = continue_logger_version(self.trainer, ckpt_path)
        self.hold_log_folder()
        # what a killed run logged past its checkpoint is logged again from here: each step once
        forget_logs_past_checkpoint(self.trainer, ckpt_path, continued)

    def before_validate(self) -> None:
        self.evaluation_log_folder()

    def before_test(self) -> None:
        self.evaluation_log_folder()

    def before_predict(self) -> None:
        self.evaluation_log_folder()

    def evaluation_log_folder(self) -> None:
        """An evaluation of a checkpoint logs inside the checkpoint's run (``<run>/version_N/<subcommand>/``), not as a
        new training version of the run name; then take its log folder."""
        log_beside_checkpoint(self.trainer, self.config[self.subcommand].get("ckpt_path"), self.subcommand)
        self.hold_log_folder()

    def hold_log_folder(self) -> None:
        """Take the run's log folder for this process (the first process of several), before anything is written
        there, and check that it can be written (:class:`~grpo_lightning.run_lock.RunLock`)."""
        if not self.trainer.loggers or not self.trainer.is_global_zero:
            return
        log_dir = self.trainer.log_dir  # picks the logger's version (continue_logger_version has set a resumed one)
        if log_dir is None or not _is_local_file_protocol(log_dir):
            return
        try:
            self.run_locks.append(RunLock(log_dir).acquire())
        except OSError as err:  # permission denied, a read-only file system, a file where a folder should be
            raise ConfigError(
                f"Cannot write to the log folder {log_dir} ({err.strerror or err}); give a folder you can write to "
                "with --trainer.logger.init_args.save_dir (or --trainer.default_root_dir without a logger)."
            ) from None


def main(args: Sequence[str] | None = None) -> LightningCLI:
    """Run the command line on ``args`` (default: ``sys.argv[1:]``).

    Exit statuses: 2 for a user error (one ``error:`` line), 143 after SIGTERM and 130 after SIGINT (the run saves
    its last completed step first; see :mod:`grpo_lightning.signals`), 1 for anything else.
    """
    # Tokenizers' thread pool and dataloader worker processes do not mix; the workers only decode images.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_deepspeed_without_cuda()
    run_locks: list[RunLock] = []
    with SignalExits() as signals:
        try:
            cli = GRPOCLI(
                GRPOModule,
                ViVQAXDataModule,
                args=resolve_config_args(sys.argv[1:] if args is None else args),
                parser_class=GRPOArgumentParser,
                save_config_kwargs={"overwrite": True},
                parser_kwargs={
                    "prog": program_name(),
                    "description": "GRPO fine-tuning of vision-language models on PyTorch Lightning.",
                },
                run_locks=run_locks,
            )
            if signals.exit_status is not None:  # a signal that came after the loops stopped looking (the export)
                raise SystemExit(signals.exit_status)
            return cli
        except UserError as err:
            if os.environ.get(TRACEBACK_ENV) == "1":
                traceback.print_exc()
            notes = "".join(f"\n{note}" for note in getattr(err, "__notes__", ()))  # e.g. where a crash checkpoint went
            print(f"error: {user_message(err)}{notes}", file=sys.stderr)
            raise SystemExit(2) from None
        except (SystemExit, KeyboardInterrupt) as stop:
            if signals.exit_status is None:
                raise
            # Lightning ends a run stopped by SIGTERM with SystemExit(None), status 0, and one stopped by Ctrl-C with 1
            notes = "".join(f"\n{note}" for note in getattr(stop, "__notes__", ()))
            name = signal.Signals(signals.received[0]).name
            print(f"Stopped by {name}.{notes}", file=sys.stderr)
            raise SystemExit(signals.exit_status) from None
        finally:
            for lock in run_locks:
                lock.release()


def program_name() -> str:
    """How the user ran us: ``python -m grpo_lightning`` or the ``grpo-lightning`` script."""
    name = Path(sys.argv[0]).name
    return "python -m grpo_lightning" if name in ("__main__.py", "-m", "-c", "") else name


if __name__ == "__main__":
    main()
