"""The command line: ``python -m grpo_lightning fit|validate|test|predict --config CONFIG.yaml``.

A LightningCLI over :class:`GRPOModule` and :class:`ViVQAXDataModule`: the constructors' typed
signatures and docstrings are the configuration schema, so ``--help`` and ``fit --print_config`` show
every option. Configs live in ``configs/`` as commented YAML.
"""

from __future__ import annotations

import os

from lightning.pytorch.cli import LightningCLI

from grpo_lightning.callbacks import StepCheckpoint, check_run_name
from grpo_lightning.data import ViVQAXDataModule
from grpo_lightning.module import GRPOModule


class GRPOCLI(LightningCLI):
    """LightningCLI that checks, before training, what would otherwise fail late or silently."""

    def before_fit(self) -> None:
        for logger in self.trainer.loggers:
            check_run_name(logger.name)
        if self.config[self.subcommand].get("ckpt_path") == "last":
            found = [
                callback.find_last_checkpoint(self.trainer)
                for callback in self.trainer.checkpoint_callbacks
                if isinstance(callback, StepCheckpoint)
            ]
            if not any(found):
                raise SystemExit(
                    "--ckpt_path last: this run name has no last.ckpt yet (and without a StepCheckpoint callback none "
                    "is looked for); drop --ckpt_path to start a new run, or give a checkpoint's path."
                )


def main(args: list[str] | None = None) -> LightningCLI:
    # Tokenizers' thread pool and dataloader worker processes do not mix; the workers only decode images.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return GRPOCLI(
        GRPOModule,
        ViVQAXDataModule,
        args=args,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": "GRPO fine-tuning of vision-language models on PyTorch Lightning."},
    )


if __name__ == "__main__":
    main()
