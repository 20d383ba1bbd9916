"""ViVQA-X data: reading every published form, checking it before training, and the LightningDataModule.

One module per stage a split goes through:

- :mod:`~grpo_lightning.data.records`: the readers (our JSONL, VLM-R1 JSONL, the three forms of the raw ViVQA-X
  JSON) that turn a file into :class:`Sample` records and a :class:`Problem` for each record they cannot use;
- :mod:`~grpo_lightning.data.checks`: the start-up scan of every sample's image;
- :mod:`~grpo_lightning.data.loading`: the dataset that opens images in the dataloader workers, and the training
  loader whose position in the epoch survives a resume;
- :mod:`~grpo_lightning.data.datamodule`: :class:`ViVQAXDataModule`, which ties them together for the Trainer.

Every name is importable from ``grpo_lightning.data`` itself, the one place the rest of the package and the CLI
import the data from.
"""

from grpo_lightning.data.checks import outside_image_dir, resolve_image, scan_samples
from grpo_lightning.data.datamodule import STAGE_SPLITS, ViVQAXDataModule
from grpo_lightning.data.loading import (
    ImageReadError,
    ResumableDataLoader,
    ResumableSampler,
    VQADataset,
    collate_samples,
    limited_length,
)
from grpo_lightning.data.records import (
    MAX_LISTED_PROBLEMS,
    DataFileNotFoundError,
    DataValidationError,
    Problem,
    Sample,
    format_problems,
    parse_record,
    read_samples,
)

__all__ = [
    "MAX_LISTED_PROBLEMS",
    "STAGE_SPLITS",
    "DataFileNotFoundError",
    "DataValidationError",
    "ImageReadError",
    "Problem",
    "ResumableDataLoader",
    "ResumableSampler",
    "Sample",
    "VQADataset",
    "ViVQAXDataModule",
    "collate_samples",
    "format_problems",
    "limited_length",
    "outside_image_dir",
    "parse_record",
    "read_samples",
    "resolve_image",
    "scan_samples",
]
