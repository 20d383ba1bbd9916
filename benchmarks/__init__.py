"""Benchmarks of grpo_lightning, each run from the repository root as ``python -m benchmarks.<name>`` or from any
folder as ``python benchmarks/<name>.py``; their figures are in ``benchmarks/RESULTS.md``. They build their models
and data with ``grpo_demo`` and run offline: importing the package sets ``HF_HUB_OFFLINE`` and
``TOKENIZERS_PARALLELISM`` (unless already set) before any Hugging Face library loads."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
