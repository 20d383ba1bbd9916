"""The LightningDataModule: the splits a stage needs, read, checked and served by the loaders.

:meth:`ViVQAXDataModule.setup` reads each split (:mod:`grpo_lightning.data.records`) and scans its images
(:mod:`grpo_lightning.data.checks`). Checks that need more than the data (prompts too long for the model's context:
:mod:`grpo_lightning.prompt_length`) refuse samples the same way, through :meth:`ViVQAXDataModule.drop_invalid`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, DistributedSampler

from grpo_lightning.data.checks import scan_samples
from grpo_lightning.data.loading import (
    ResumableDataLoader,
    ResumableSampler,
    VQADataset,
    collate_samples,
    limited_length,
)
from grpo_lightning.data.records import DataValidationError, Problem, Sample, format_problems, read_samples
from grpo_lightning.errors import ConfigError
from grpo_lightning.task import render_prompt

#: The splits each stage of the Trainer reads.
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}


@dataclass
class _Split:
    file: str | None
    image_dir: str | None
    dataset: VQADataset | None = None
    skipped: list[Problem] = field(default_factory=list)


def _empty_split_message(name: str, file: str) -> str:
    what_to_do = {
        "train": "training on it would export an untrained model. Point data.train_file at a file with samples "
        "(`python -m grpo_lightning.prepare` writes them)",
        "val": "point data.val_file at a file with samples, or set data.val_file: null to train without validation",
        "test": "point data.test_file at a file with samples, or set data.test_file: null to use the validation split",
    }[name]
    return f"{file}: the {name} split has no samples (the file holds no records); {what_to_do}."


class ViVQAXDataModule(L.LightningDataModule):
    """ViVQA-X (or any VLM-R1-format JSONL) for GRPO training and evaluation.

    Before anything runs, every record is checked and every image's header read; problems stop the run with
    a report naming file, line, sample id and path (or, with ``skip_invalid_samples``, those samples are
    left out and listed). A split the stage needs that has no samples stops the run too.

    Args:
        train_file: training split: our JSONL (``prepare``), a VLM-R1 JSONL, or a ViVQA-X JSON.
        val_file: validation split (None: no validation).
        test_file: test split for ``test`` and ``predict`` (None: they use the validation split).
        train_image_dir: folder of the training images (COCO ``train2014``).
        val_image_dir: folder of the validation images (COCO ``val2014``).
        test_image_dir: folder of the test images (None: ``val_image_dir``, as in ViVQA-X).
        batch_size: prompts per step over all processes; each process takes ``batch_size / world_size`` whole
            prompts and samples all ``num_generations`` completions of each, so a group never spans processes.
        val_batch_size: prompts per evaluation batch on each process.
        num_workers: dataloader worker processes (images are decoded there).
        prompt_template: the prompt, with ``{question}`` where the question goes; None uses the prompt stored in
            a VLM-R1 JSONL, and the default Vietnamese prompt for raw ViVQA-X JSON.
        max_image_side: downscale larger images to this side in the workers (None: keep).
        shuffle: shuffle the training prompts every epoch.
        skip_invalid_samples: leave out samples with problems (and list them) instead of stopping.
        verify_images: also decode every image before training, which finds truncated or corrupt image data but
            reads every file in full (3 to 6 ms a 640x480 JPEG). Off, the start-up scan opens each image and parses
            its header only (about 0.1 ms an image), which finds missing files and files that are no image at all.
        allow_images_outside_image_dir: accept image paths in the data files that lead out of the split's image
            folder (``../x.jpg``, absolute paths elsewhere). Off, such samples are refused at start-up, so a data
            file cannot make training read arbitrary files; symlinks inside the folder are followed freely.
        seed: seed of the training order (each epoch's shuffle is drawn from ``seed + epoch``).
    """

    def __init__(
        self,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        train_image_dir: str = "data/coco/train2014",
        val_image_dir: str = "data/coco/val2014",
        test_image_dir: str | None = None,
        batch_size: int = 4,
        val_batch_size: int = 8,
        num_workers: int = 0,
        prompt_template: str | None = None,
        max_image_side: int | None = 1024,
        shuffle: bool = True,
        skip_invalid_samples: bool = False,
        verify_images: bool = False,
        allow_images_outside_image_dir: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        if prompt_template is not None:
            render_prompt(prompt_template, "")  # fail at construction on a template without {question}
        if batch_size < 1 or val_batch_size < 1:
            raise ConfigError("data.batch_size and data.val_batch_size must be at least 1.")
        self.splits = {
            "train": _Split(train_file, train_image_dir),
            "val": _Split(val_file, val_image_dir),
            "test": _Split(test_file, test_image_dir or val_image_dir),
        }

    @property
    def per_device_batch_size(self) -> int:
        world_size = self.trainer.world_size if self.trainer is not None else 1
        if self.hparams.batch_size % world_size:
            raise ConfigError(
                f"data.batch_size ({self.hparams.batch_size}) must be divisible by the number of processes "
                f"({world_size}): each process takes batch_size / world_size whole prompts."
            )
        return self.hparams.batch_size // world_size

    def setup(self, stage: str | None = None) -> None:
        names = STAGE_SPLITS.get(stage, tuple(self.splits)) if stage else tuple(self.splits)
        if stage == "fit":
            if self.hparams.train_file is None:
                raise ConfigError("`fit` needs training data: set data.train_file (and data.train_image_dir).")
            _ = self.per_device_batch_size  # check divisibility before any work
        for name in names:
            self._load(name)

    def _load(self, name: str) -> None:
        split = self.splits[name]
        if name == "test" and split.file is None:  # test and predict fall back to the validation split
            self._load("val")
            self.splits["test"] = self.splits["val"]
            return
        if split.file is None or split.dataset is not None:
            return
        samples, problems = read_samples(split.file)  # the records it could not use are not among the samples
        hp = self.hparams
        scanned = scan_samples(samples, split.image_dir, hp.verify_images, hp.allow_images_outside_image_dir)
        problems += scanned.values()
        hint = f"Fix the data of the {name} split ({split.file})"
        samples = self._without_invalid(name, samples, problems, set(scanned), hint)
        if not samples:
            raise DataValidationError([], _empty_split_message(name, split.file))
        split.dataset = VQADataset(samples, split.image_dir, hp.prompt_template, hp.max_image_side)

    def _without_invalid(
        self, name: str, samples: list[Sample], problems: list[Problem], invalid: set[int], hint: str
    ) -> list[Sample]:
        """``samples`` less those at the ``invalid`` positions, if ``skip_invalid_samples`` allows, with a warning that
        counts and lists ``problems`` (one per record left out); else a :class:`DataValidationError` that lists them.

        Args:
            name: the split (``train``, ``val``, ``test``).
            samples: the split's samples.
            problems: one per record left out: those at ``invalid`` and any the reader already left out.
            invalid: positions in ``samples`` to leave out.
            hint: what to do, naming the file; the error adds ", or set data.skip_invalid_samples: true ...".
        """
        if not problems:
            return samples
        split = self.splits[name]
        if not self.hparams.skip_invalid_samples:
            raise DataValidationError(
                problems,
                f"{hint}, or set data.skip_invalid_samples: true to leave these samples out.",
            )
        samples = [sample for index, sample in enumerate(samples) if index not in invalid]
        split.skipped += problems
        rank_zero_warn(
            f"Skipping {len(problems)} invalid record(s) of the {name} split ({split.file}); "
            f"{len(samples)} samples remain.\n{format_problems(problems)}"
        )
        if not samples:
            raise DataValidationError(problems, f"No valid sample is left in {split.file}.")
        return samples

    def drop_invalid(self, name: str, problems: dict[int, Problem], hint: str) -> None:
        """Refuse, or with ``skip_invalid_samples`` leave out, loaded samples of a split that a check made after
        ``setup`` found wrong; call it before the dataloaders are made, so that a sample left out is in none of them.

        Args:
            name: the split (``train``, ``val``, ``test``), loaded.
            problems: one for each sample to leave out, by its position in the split's dataset.
            hint: what to do, naming the file; the error adds ", or set data.skip_invalid_samples: true ...".

        Raises:
            DataValidationError: listing ``problems`` and ``hint`` (without ``skip_invalid_samples``), or when no sample
                is left.
        """
        if not problems:
            return
        split = self.splits[name]
        dataset = split.dataset
        samples = self._without_invalid(name, dataset.samples, list(problems.values()), set(problems), hint)
        split.dataset = VQADataset(samples, dataset.image_dir, dataset.prompt_template, dataset.max_image_side)

    def dataset(self, name: str) -> VQADataset | None:
        return self.splits[name].dataset

    def train_dataloader(self) -> DataLoader:
        dataset = self.splits["train"].dataset
        trainer = self.trainer
        sampler = ResumableSampler(
            dataset,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            shuffle=self.hparams.shuffle,
            seed=self.hparams.seed,
        )
        # The position in the epoch travels in the checkpoint through the loader (ResumableDataLoader).
        loader = self._loader(dataset, self.per_device_batch_size, sampler=sampler, loader_class=ResumableDataLoader)
        if trainer is not None:
            loader.epoch_length = lambda: limited_length(len(loader), trainer.limit_train_batches)
        return loader

    def val_dataloader(self) -> DataLoader | list:
        dataset = self.splits["val"].dataset
        if dataset is None:  # training without validation
            return []
        return self._loader(dataset, self.hparams.val_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict")

    def _eval_loader(self, stage: str) -> DataLoader:
        dataset = self.splits["test"].dataset
        if dataset is None:
            raise ConfigError(f"`{stage}` needs held-out data: set data.test_file or data.val_file.")
        return self._loader(dataset, self.hparams.val_batch_size)

    def _loader(
        self,
        dataset: VQADataset,
        batch_size: int,
        sampler: DistributedSampler | None = None,
        loader_class: type[DataLoader] = DataLoader,
    ) -> DataLoader:
        return loader_class(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.hparams.num_workers,
            collate_fn=collate_samples,
            persistent_workers=self.hparams.num_workers > 0,
            # Its own generator: creating a loader iterator must not draw from the global RNG, whose state a
            # resumed run restores from the checkpoint for sampling.
            generator=torch.Generator().manual_seed(self.hparams.seed),
        )
