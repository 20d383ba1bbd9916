"""The start-up check that every prompt, image included, leaves the model room for a whole completion.

A prompt longer than the context used to train with nothing but the tokenizer's warning, its positions past those
the model knows. :class:`PromptLengthCheck` counts every prompt of the stage's splits exactly, from each image's
header (:func:`~grpo_lightning.images.loaded_size`) and the prompt text
(:meth:`~grpo_lightning.adapters.base.VLMAdapter.prompt_token_counts`); :func:`check_prompt_lengths` compares the
counts with the context and hands the samples that do not fit to
:meth:`~grpo_lightning.data.ViVQAXDataModule.drop_invalid`, which refuses them (or leaves them out, with
``data.skip_invalid_samples``).

It runs in the ``setup`` hook: Lightning calls the data module's ``setup`` (the splits are read), then the
callbacks', then the module's; then ``configure_model`` loads the weights, and only after it are the dataloaders
made. So a prompt that does not fit stops the run before minutes of weight loading, and one left out is in no
dataloader. Only the checkpoint's processor and config are read here; the adapter built from them becomes the
module's, so ``configure_model`` reads the processor no second time (and a module configured before the fit lends
its own adapter instead).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import lightning as L
from lightning.pytorch.callbacks import Callback

from grpo_lightning.adapters import load_adapter
from grpo_lightning.data import STAGE_SPLITS, Problem, Sample, ViVQAXDataModule, resolve_image
from grpo_lightning.images import loaded_size


class PromptLengthCheck(Callback):
    """Before the weights load, refuse (or leave out) the samples whose prompt and longest completion exceed the
    model's context (its text config's ``max_position_embeddings``).

    Does nothing for a data module other than :class:`~grpo_lightning.data.ViVQAXDataModule` or a checkpoint whose
    config gives no context length. Expects :class:`~grpo_lightning.module.GRPOModule`'s ``model_name_or_path``,
    ``image``, ``sampling`` and ``adapter``; sets ``adapter`` when it is None.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        data = trainer.datamodule
        if not isinstance(data, ViVQAXDataModule):
            return
        path = pl_module.model_name_or_path
        if pl_module.adapter is None:
            # configured as configure_model would configure it, which then uses this one
            pl_module.adapter, config = load_adapter(path, **dataclasses.asdict(pl_module.image))
        else:  # the model was configured before the fit: count with the processor that will run
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(path)
        context_length = getattr(config.get_text_config(), "max_position_embeddings", None)
        if context_length is None:
            return
        check_prompt_lengths(
            data, stage, pl_module.adapter.prompt_token_counts, context_length, pl_module.sampling.max_completion_length
        )


def check_prompt_lengths(
    data: ViVQAXDataModule,
    stage: str | None,
    count_tokens: Callable[[list[str], list[tuple[int, int]]], list[int]],
    context_length: int,
    max_completion_length: int,
) -> None:
    """Refuse, or with ``skip_invalid_samples`` leave out, each sample of the stage's splits whose prompt leaves no
    room for a whole completion in the model's context (:func:`overlong_prompts` says why the completion counts).

    Counts are exact and need no pixels: each image's size as the model gets it comes from its header
    (:func:`~grpo_lightning.images.loaded_size`), and ``count_tokens`` turns prompts and sizes into token counts. Call
    it after ``data.setup(stage)`` and before the dataloaders are made, so that a sample left out is in none of them
    (:class:`PromptLengthCheck` calls it before the weights load).

    Args:
        data: the data module, its stage's splits loaded.
        stage: the Trainer's stage (``fit``, ``validate``, ``test``, ``predict``); None: every loaded split.
        count_tokens: ``(prompts, image sizes) -> token counts``, e.g. ``VLMAdapter.prompt_token_counts``.
        context_length: the model's context (its text config's ``max_position_embeddings``).
        max_completion_length: the most tokens a completion may have.

    Raises:
        DataValidationError: naming each such sample (file, line, id, its tokens) and what to do.
    """
    names = STAGE_SPLITS.get(stage, tuple(data.splits)) if stage else tuple(data.splits)
    checked: set[int] = set()
    for stage_split in names:
        split = data.splits[stage_split]
        dataset = split.dataset
        if dataset is None or id(split) in checked:
            continue
        checked.add(id(split))
        # the test split may be the validation split itself (no test_file): named as the scan named it
        name = next(other for other, named in data.splits.items() if named is split)
        paths = [resolve_image(sample.image, dataset.image_dir) for sample in dataset.samples]
        sizes = {path: loaded_size(path, dataset.max_image_side) for path in dict.fromkeys(paths)}
        sample_sizes = [sizes[path] for path in paths]
        counts, refused = token_counts(count_tokens, [dataset.prompt_for(s) for s in dataset.samples], sample_sizes)
        problems = overlong_prompts(dataset.samples, counts, context_length, max_completion_length)
        for index, size in enumerate(sample_sizes):
            if size in refused:
                sample = dataset.samples[index]
                message = f"the model's processor refuses its image ({size[0]}x{size[1]} as loaded): {refused[size]}"
                problems[index] = Problem(sample.where, message, sample.id)
        hint = (
            f"These prompts of the {name} split ({split.file}) leave no room in the model's context of "
            f"{context_length} tokens (max_position_embeddings) for a completion of "
            f"model.sampling.max_completion_length ({max_completion_length}) tokens: shorten the questions or "
            "data.prompt_template, lower the image resolution (model.image options, data.max_image_side) or "
            "max_completion_length"
        )
        data.drop_invalid(name, dict(sorted(problems.items())), hint)


def token_counts(
    count_tokens: Callable[[list[str], list[tuple[int, int]]], list[int]],
    prompts: list[str],
    sizes: list[tuple[int, int]],
) -> tuple[list[int | None], dict[tuple[int, int], str]]:
    """Each prompt's tokens (None where the processor refuses its image), and the refused image sizes with the
    processor's reason (Qwen2-VL's: an aspect ratio above 200; such an image would stop training at its batch).

    One call counts every prompt; only when it fails is each distinct size tried alone, and the rest counted again.
    """
    try:
        return list(count_tokens(prompts, sizes)), {}
    except ValueError:
        pass
    refused = {}
    for size in dict.fromkeys(sizes):
        try:
            count_tokens(prompts[:1], [size])
        except ValueError as err:
            refused[size] = str(err)
    kept = [index for index, size in enumerate(sizes) if size not in refused]
    kept_counts = iter(count_tokens([prompts[i] for i in kept], [sizes[i] for i in kept]) if kept else [])
    return [None if size in refused else next(kept_counts) for size in sizes], refused


def overlong_prompts(
    samples: list[Sample],
    counts: list[int | None],
    context_length: int,
    max_completion_length: int,
) -> dict[int, Problem]:
    """A problem for each sample whose prompt leaves no room for a whole completion in the model's context, by the
    sample's position.

    A prompt fits when ``prompt tokens + max_completion_length <= context_length``, not merely ``prompt tokens <=
    context_length``: sampling appends up to ``max_completion_length`` tokens to the prompt, and the log-prob passes
    run prompt and completion as one sequence, so a prompt that only just fits would have its completions run past
    the positions the model was trained on.

    Args:
        samples: a split's samples.
        counts: each sample's prompt tokens, image included (``VLMAdapter.prompt_token_counts``); None: not counted
            (its image is refused, a problem of its own).
        context_length: the model's context (its text config's ``max_position_embeddings``).
        max_completion_length: the most tokens a completion may have.
    """
    problems = {}
    for index, (sample, count) in enumerate(zip(samples, counts, strict=True)):
        if count is not None and count + max_completion_length > context_length:
            message = (
                f"prompt of {count} tokens (image included) + max_completion_length {max_completion_length} = "
                f"{count + max_completion_length} tokens, more than the model's context of {context_length}"
            )
            problems[index] = Problem(sample.where, message, sample.id)
    return problems
