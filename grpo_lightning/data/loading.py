"""The dataset and the dataloaders: images are read where the batches are made.

The main process holds only :class:`~grpo_lightning.data.records.Sample` records (paths and strings). Images are
opened, converted to RGB and downscaled inside the dataloader workers (:class:`VQADataset`). The training loader,
:class:`ResumableDataLoader` over a :class:`ResumableSampler`, keeps its position in the epoch in the checkpoint.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler

from grpo_lightning.data.checks import resolve_image
from grpo_lightning.data.records import Sample
from grpo_lightning.errors import UserError
from grpo_lightning.images import load_rgb
from grpo_lightning.task import DEFAULT_PROMPT_TEMPLATE, format_solution, render_prompt


class ImageReadError(UserError, ValueError):
    """An image that cannot be read when a batch is loaded (the start-up scan reads only headers)."""


class VQADataset(Dataset):
    """Samples with their prompt; the image is opened (in the dataloader worker) only when an item is fetched.

    Args:
        samples: the split's samples.
        image_dir: folder that holds the samples' image files.
        prompt_template: template with ``{question}``; None uses the prompt stored in the file when there is one
            (VLM-R1 JSONL) and the default template otherwise.
        max_image_side: images larger than this on their longer side are downscaled (None: never).
    """

    def __init__(
        self,
        samples: list[Sample],
        image_dir: str | Path,
        prompt_template: str | None = None,
        max_image_side: int | None = None,
    ):
        self.samples = samples
        self.image_dir = Path(image_dir)
        self.prompt_template = prompt_template
        self.max_image_side = max_image_side

    def __len__(self) -> int:
        return len(self.samples)

    def prompt_for(self, sample: Sample) -> str:
        if self.prompt_template is None and sample.prompt is not None:
            return sample.prompt
        return render_prompt(self.prompt_template or DEFAULT_PROMPT_TEMPLATE, sample.question)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        image_path = resolve_image(sample.image, self.image_dir)
        try:
            image = load_rgb(image_path)
        except Exception as err:
            raise ImageReadError(
                f"{sample.where}: sample {sample.id}: cannot read image {image_path} ({err}). "
                "Set data.verify_images: true to find every such file before training starts."
            ) from err
        if self.max_image_side is not None and max(image.size) > self.max_image_side:
            image.thumbnail((self.max_image_side, self.max_image_side))
        explanations = list(sample.explanations)
        first = explanations[0] if explanations else ""
        return {
            "id": sample.id,
            "question": sample.question,
            "prompt": self.prompt_for(sample),
            "image": image,
            "image_path": str(image_path),
            "answer": sample.answer,
            "explanations": explanations,
            "solution": format_solution(sample.answer, first),
            "question_type": sample.question_type,
            "answer_type": sample.answer_type,
        }


class ResumableSampler(DistributedSampler):
    """This process's share of the prompts, in a (seed, epoch)-determined order that can resume mid-epoch.

    A ``DistributedSampler`` (so Lightning leaves it in place under DDP) with one addition: ``skip`` drops
    the first samples of the next pass only, so that a run resumed from a checkpoint continues with the
    batches it had not seen yet instead of starting the epoch over (their images are never read). ``len``
    stays the full epoch's, which is what Lightning's restored batch counters expect.
    :class:`ResumableDataLoader` sets ``skip``.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool, seed: int, skip: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])


_END = object()


class ResumableDataLoader(DataLoader):
    """The training DataLoader, whose position in the epoch is part of Lightning's checkpoint.

    Lightning keeps the ``state_dict()`` of a training dataloader that has one in the fit loop's state
    (``checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]``) and hands it to ``load_state_dict``
    before a resumed run draws its first batch; the epoch's order itself is set by Lightning
    (``sampler.set_epoch``). The position counts the batches handed out: the sampler and the worker processes run
    ahead of it. The sampler must be a :class:`ResumableSampler`.

    A training step may look at the batches ahead of it with :meth:`upcoming` without taking them (asynchronous
    rollouts sample them early); they count in the position once handed out, as any batch.

    A training step may take further batches of the same epoch with :meth:`next_batch` (dynamic sampling refills a
    step whose groups carried no learning signal); they count in the position like the loop's own, so the loop's
    next batch is the one after them, and a resumed run neither repeats nor skips them. Such a step can use up the
    epoch before the loop has taken as many batches as it expects: the loop's next request then ends the epoch,
    and a run resumed from the checkpoint of that step ends the same epoch there too (the position remembers its
    epoch once the epoch is used up).
    """

    def __init__(self, *args: Any, epoch_length: Callable[[], int | float] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, ResumableSampler):
            raise TypeError(f"ResumableDataLoader needs a ResumableSampler, not {type(self.sampler).__name__}.")
        #: Batches of the current epoch handed out so far (the skipped ones of a resumed epoch included).
        self.batches_done = 0
        self._resume_at = 0
        self._resume_epoch: int | None = None  # the epoch of a saved position that had used its epoch up
        self._epoch_batches: Iterator[Any] | None = None  # the batches of the epoch being iterated
        self._source: Iterator[Any] | None = None  # the DataLoader's own iterator of that epoch
        self._lookahead: collections.deque[Any] = collections.deque()  # its batches taken by upcoming(), not handed out
        # Batches the training loop takes from one epoch: len(self), or fewer with the Trainer's
        # limit_train_batches (the data module passes that count).
        self.epoch_length = epoch_length or (lambda: len(self))

    def __iter__(self) -> Iterator[Any]:
        self._epoch_batches = self._batches_of_epoch()
        return self._epoch_batches

    def _batches_of_epoch(self) -> Iterator[Any]:
        # A generator: this runs when the loop asks for the epoch's first batch, not when Lightning calls iter().
        resume_at, self._resume_at = self._resume_at, 0
        resume_epoch, self._resume_epoch = self._resume_epoch, None
        if resume_at >= self.epoch_length():
            if resume_epoch is not None and resume_epoch == self.sampler.epoch:
                # saved in a step that used the epoch up before the loop expected it: the epoch ends here
                self.batches_done = resume_at
                return
            resume_at = 0  # saved after the epoch's last batch: the next epoch starts afresh
        self.batches_done = resume_at
        self.sampler.skip = resume_at * self.batch_size
        self._source, self._lookahead = super().__iter__(), collections.deque()
        while self.batches_done < self.epoch_length():  # refills may have taken the batches the loop counts on
            batch = self._lookahead.popleft() if self._lookahead else next(self._source, _END)
            if batch is _END:
                return
            self.batches_done += 1
            yield batch

    def next_batch(self) -> Any | None:
        """The next batch of the epoch being iterated, for a step that needs more prompts; None when it is used up.

        Raises:
            RuntimeError: called when no epoch is being iterated (outside a training step).
        """
        if self._epoch_batches is None:
            raise RuntimeError("ResumableDataLoader.next_batch() is for a training step, while an epoch is iterated.")
        return next(self._epoch_batches, None)

    def upcoming(self, count: int) -> list[Any]:
        """The next ``count`` batches of the epoch being iterated (fewer near its end), without taking them: they do
        not count in the position, and the loop's and :meth:`next_batch`'s next batches are these, in order.
        Asynchronous rollouts sample them ahead of their steps."""
        if self._epoch_batches is None or self._source is None:
            return []
        while len(self._lookahead) < count and self.batches_done + len(self._lookahead) < self.epoch_length():
            batch = next(self._source, _END)
            if batch is _END:
                break
            self._lookahead.append(batch)
        return list(self._lookahead)[:count]

    @property
    def position(self) -> tuple[int, int]:
        """(epoch, batches of it handed out): the position of the next batch; :meth:`upcoming`'s k-th batch is at
        ``batches + k``."""
        return int(self.sampler.epoch), self.batches_done

    def state_dict(self) -> dict[str, int]:
        state = {"batches_done": self.batches_done}
        if self.batches_done >= self.epoch_length():
            state["epoch"] = self.sampler.epoch
        return state

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume_at = int(state_dict["batches_done"])
        self._resume_epoch = state_dict.get("epoch")


def limited_length(length: int, limit: int | float | None) -> int:
    """Batches of an epoch of ``length`` under the Trainer's ``limit_train_batches``, counted as Lightning does."""
    if isinstance(limit, int):
        return min(length, limit)
    return length if limit is None else int(length * limit)


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Column-wise lists; images stay PIL images (the model adapter runs the processor)."""
    return {key: [sample[key] for sample in samples] for key in samples[0]}
