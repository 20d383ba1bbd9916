"""The command line: ``python -m grpo_lightning fit|validate|test|predict --config CONFIG.yaml``.

A LightningCLI over :class:`GRPOModule` and :class:`ViVQAXDataModule`: the constructors' typed
signatures and docstrings are the configuration schema, so ``--help`` and ``fit --print_config`` show
every option. Configs live in ``configs/`` as commented YAML.
"""

from __future__ import annotations

import os

from lightning.pytorch.cli import LightningCLI

from grpo_lightning.data import ViVQAXDataModule
from grpo_lightning.module import GRPOModule


def main(args: list[str] | None = None) -> LightningCLI:
    # Tokenizers' thread pool and dataloader worker processes do not mix; the workers only decode images.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return LightningCLI(
        GRPOModule,
        ViVQAXDataModule,
        args=args,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": "GRPO fine-tuning of vision-language models on PyTorch Lightning."},
    )


if __name__ == "__main__":
    main()
