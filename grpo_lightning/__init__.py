"""grpo_lightning: GRPO fine-tuning of vision-language models on PyTorch Lightning."""

import os

__version__ = "0.1.0"


def quiet_deepspeed_without_cuda() -> None:
    """Tell DeepSpeed up front that a machine without CUDA runs it on the CPU.

    DeepSpeed gets imported where nothing uses it (saving a Hugging Face model asks accelerate to unwrap a
    DeepSpeed engine; the recipe's optimizer class is resolved while parsing) and, without CUDA, announces on
    stdout that it falls back to the CPU: what such a machine gets anyway, as Lightning runs DeepSpeed on CUDA
    only. Setting ``DS_ACCELERATOR`` (unless the user did) keeps that line out of the logs and out of
    ``--print_config``'s YAML. The command-line entry points call this; importing the package changes nothing.
    """
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
