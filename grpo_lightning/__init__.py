"""grpo_lightning: GRPO fine-tuning of vision-language models on PyTorch Lightning."""

__version__ = "0.1.0"
