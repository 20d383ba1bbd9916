"""The adapter interface: everything the GRPO module needs from a vision-language model family.

The module only ever talks to a :class:`VLMAdapter`. An adapter turns (image, prompt) pairs into model
inputs with the processor's chat template, samples completions, and computes per-token log-probs of
completion tokens. Family quirks (which processor outputs carry the image, how positions are computed)
live in the subclasses, so the module never branches on ``model_type``.

Visual inputs are kept per prompt (``PromptBatch.visual[i]``) and concatenated along dim 0 on demand.
That one rule covers both families: InternVL's ``pixel_values`` are (tiles, 3, H, W) and Qwen2-VL's
``pixel_values`` / ``image_grid_thw`` are (patches, C*T*P*P) / (images, 3), and each concatenates per
image along dim 0. It lets the module build any micro-batch (for example the G copies of one prompt)
without knowing the tensor layouts.

Shared encoding: the G sequences of a prompt share its image and its prompt text, so every pass (sampling and
log-probs) encodes each distinct prompt's image once, prefills the prompt once and copies its KV cache to the
sequences (``prefill``). ``VLMAdapter(processor, shared_encoding=False)`` is the unshared reference that the tests
and benchmarks compare against: every sequence encodes its image and runs its whole prompt. The training module
always uses the shared path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from PIL import Image
from torch import Tensor
from transformers.cache_utils import DynamicCache

from grpo_lightning.adapters import chunked_head
from grpo_lightning.adapters.chunked_head import head_logps
from grpo_lightning.adapters.prefix_cache import CaptureCache, cache_through_checkpointing
from grpo_lightning.errors import ConfigError


@dataclass
class PromptBatch:
    """Tokenised prompts of B samples, each with its own visual tensors.

    Attributes:
        input_ids: (B, P) prompt token ids, left-padded.
        attention_mask: (B, P) 1 for real tokens, 0 for padding.
        visual: B dicts of the processor's image tensors for each prompt (dim 0 per image).
        texts: B rendered prompt strings (chat template applied), for logging.
        token_aligned: other (B, P) per-token inputs the model needs (e.g. Qwen2-VL's ``mm_token_type_ids``),
            left-padded with 0 like ``input_ids``.
        feature_memo: None, or a dict that keeps each prompt's image features (computed without gradients) for
            every later pass over these prompts; the adapter that makes the batch sets it when those features cannot
            change between the passes (see ``VLMAdapter.attach``).
    """

    input_ids: Tensor
    attention_mask: Tensor
    visual: list[dict[str, Tensor]]
    texts: list[str] = field(default_factory=list)
    token_aligned: dict[str, Tensor] = field(default_factory=dict)
    feature_memo: dict[int, Any] | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> PromptBatch:
        return PromptBatch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            visual=[{k: v.to(device) for k, v in d.items()} for d in self.visual],
            texts=self.texts,
            token_aligned={k: v.to(device) for k, v in self.token_aligned.items()},
            feature_memo=self.feature_memo,
        )

    def token_inputs(self, indices: list[int], completion_mask: Tensor | None = None) -> dict[str, Tensor]:
        """``input_ids``, ``attention_mask`` and the token-aligned inputs of the given prompts, with the padding
        columns that all of them share trimmed; with ``completion_mask`` (N, C), extended over the completion
        (token-aligned inputs are 0 there: completions are text)."""
        index = torch.as_tensor(indices, device=self.input_ids.device)
        mask = self.attention_mask[index]
        keep = mask.bool().any(dim=0)
        first = int(keep.nonzero()[0].item()) if keep.any() else 0
        out = {"attention_mask": mask[:, first:], "input_ids": self.input_ids[index, first:]}
        out.update({k: v[index, first:] for k, v in self.token_aligned.items()})
        if completion_mask is not None:
            out["attention_mask"] = torch.cat([out["attention_mask"], completion_mask.to(mask.dtype)], dim=1)
            for key in self.token_aligned:
                out[key] = torch.cat([out[key], torch.zeros_like(completion_mask, dtype=out[key].dtype)], dim=1)
        return out

    def visual_for(self, indices: list[int], dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """Concatenate the visual tensors of the given prompts (repeats allowed), in that order."""
        keys = self.visual[indices[0]].keys() if indices else ()
        out = {}
        for key in keys:
            tensor = torch.cat([self.visual[i][key] for i in indices], dim=0)
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            out[key] = tensor
        return out


class VLMAdapter:
    """Base adapter: chat-template prompting, sampling and log-probs for HF image-text-to-text models.

    Subclasses set ``model_types`` (the config ``model_type`` values they serve) and override the
    hooks where their family differs.

    Args:
        processor: the checkpoint's processor (chat template, tokenizer, image processor).
        shared_encoding: encode each distinct prompt (image and text) once per pass and share it with the prompt's
            sequences, as training does; False gives the unshared reference path (every sequence encodes its image
            and its whole prompt), which computes the same values more slowly, for tests and benchmarks.
    """

    model_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, processor: Any, shared_encoding: bool = True):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        if self.tokenizer.pad_token_id is None:
            raise ValueError(
                "The tokenizer has no pad token; set `pad_token` in the checkpoint's tokenizer_config.json."
            )
        self.shared_encoding = shared_encoding
        # The model whose image features are kept across the passes of a step (``attach``), or None.
        self._feature_model: torch.nn.Module | None = None

    # ---------------------------------------------------------------------------------- resolution
    #: The image-resolution options (``GRPOModule`` arguments of the same names) that this family's processor has.
    image_resolution_options: ClassVar[tuple[str, ...]] = ()

    def configure_image_resolution(self, **options: Any) -> None:
        """Set the image resolution from the options that are not None, on the processor object itself, so that
        ``save_pretrained`` (the export) writes them into ``processor_config.json``.

        Raises:
            ConfigError: an option that this family's processor does not have (it would be silently ignored), or a
                value that it cannot use.
        """
        given = {name: value for name, value in options.items() if value is not None}
        foreign = [name for name in given if name not in self.image_resolution_options]
        if foreign:
            verb, it = ("does", "it") if len(foreign) == 1 else ("do", "them")
            model_types = " / ".join(self.model_types)
            raise ConfigError(
                f"{', '.join(foreign)} {verb} not apply to this checkpoint (model_type {model_types}), "
                f"whose processor would ignore {it}; remove {it} from the model options. Image-resolution options of "
                f"this model family: {', '.join(self.image_resolution_options) or 'none'}."
            )
        if given:
            self.set_image_resolution(**given)

    def set_image_resolution(self, **options: Any) -> None:
        """Write the given (accepted, not None) image-resolution options into the processor; families that have
        options override this."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------- prompting
    def build_messages(self, prompt: str) -> list[dict[str, Any]]:
        """One user turn holding the image and the prompt text."""
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]

    def render_prompt(self, prompt: str) -> str:
        return self.processor.apply_chat_template(
            self.build_messages(prompt), add_generation_prompt=True, tokenize=False
        )

    def prepare_prompts(self, images: list[Image.Image], prompts: list[str]) -> PromptBatch:
        """Tokenise B (image, prompt) pairs, left-padded for generation.

        Each sample goes through the processor on its own so that its visual tensors can be kept apart.
        """
        if len(images) != len(prompts):
            raise ValueError(f"Got {len(images)} images for {len(prompts)} prompts; each prompt needs one image.")
        texts, ids, visual = [], [], []
        aligned: dict[str, list[Tensor]] = {key: [] for key in self.token_aligned_keys}
        for image, prompt in zip(images, prompts, strict=True):
            text = self.render_prompt(prompt)
            encoded = self.processor(text=[text], images=[image], return_tensors="pt")
            texts.append(text)
            ids.append(encoded["input_ids"][0])
            visual.append({k: v for k, v in encoded.items() if k in self.visual_keys})
            for key in self.token_aligned_keys:
                aligned[key].append(encoded[key][0])
        input_ids, attention_mask = left_pad(ids, self.tokenizer.pad_token_id)
        token_aligned = {key: left_pad(values, 0)[0] for key, values in aligned.items()}
        memo = {} if self.reuses_image_features else None
        return PromptBatch(input_ids, attention_mask, visual, texts, token_aligned, feature_memo=memo)

    def prompt_token_counts(self, prompts: Sequence[str], image_sizes: Sequence[tuple[int, int]]) -> list[int]:
        """How many tokens each (image, prompt) pair of ``prepare_prompts`` has, from the image's size alone.

        Exact, without pixels: the rendered prompt is tokenised as the processor tokenises it, and its one image
        placeholder is replaced by the image's token count at the configured resolution (``image_token_count``).
        Repeated prompts and image sizes are counted once, so a split of tens of thousands of samples takes seconds.

        Args:
            prompts: B prompt texts, as the data gives them (before the chat template).
            image_sizes: B ``(width, height)`` of the images as the processor gets them.

        Returns:
            B token counts, each ``prepare_prompts([image], [prompt]).input_ids.shape[1]``.
        """
        if len(prompts) != len(image_sizes):
            raise ValueError(f"Got {len(image_sizes)} image sizes for {len(prompts)} prompts; give one per prompt.")
        texts = list(dict.fromkeys(prompts))
        encoded = self.tokenizer([self.render_prompt(text) for text in texts])["input_ids"]
        text_tokens = {text: len(ids) for text, ids in zip(texts, encoded, strict=True)}
        image_tokens = {size: self.image_token_count(size) for size in set(image_sizes)}
        # the placeholder token that the image's tokens replace
        return [text_tokens[p] - 1 + image_tokens[size] for p, size in zip(prompts, image_sizes, strict=True)]

    def image_token_count(self, image_size: tuple[int, int]) -> int:
        """Prompt tokens that stand for a ``(width, height)`` image, at the resolution the processor is set to.

        The processor's own count (``_get_num_multimodal_tokens``, the helper vLLM uses to size prompts without
        pixels), which reads the image processor's current settings, those ``configure_image_resolution`` wrote
        included. Families that wrap the image's tokens in markers add them.
        """
        width, height = image_size
        return int(self.processor._get_num_multimodal_tokens(image_sizes=[(height, width)]).num_image_tokens[0])

    #: Where the vision encoder and the language model sit in the model (``get_submodule`` paths).
    vision_tower_path: ClassVar[str] = "model.vision_tower"
    language_model_path: ClassVar[str] = "model.language_model"
    #: Every module that ``image_features`` runs: the vision encoder and the projector into the language model.
    image_feature_paths: ClassVar[tuple[str, ...]] = ("model.vision_tower", "model.multi_modal_projector")
    #: LoRA targets by default: every attention and MLP projection of the language model.
    default_lora_targets: ClassVar[tuple[str, ...]] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )

    def vision_tower(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.get_submodule(self.vision_tower_path)

    def image_feature_modules(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        return [model.get_submodule(path) for path in self.image_feature_paths]

    def lora_target_regex(self, names: Sequence[str] | None = None) -> str:
        """A peft ``target_modules`` regex for the given projection names inside the language model only.

        The vision tower uses the same names (``q_proj``...) in some families, hence the path anchor.
        """
        names = tuple(names) if names else self.default_lora_targets
        alternatives = "|".join(re.escape(name) for name in names)
        return rf"{re.escape(self.language_model_path)}\..*\.({alternatives})"

    #: Processor outputs that carry the image, one entry per image along dim 0.
    visual_keys: ClassVar[tuple[str, ...]] = ("pixel_values",)
    #: Processor outputs with one value per prompt token, besides input_ids and attention_mask.
    token_aligned_keys: ClassVar[tuple[str, ...]] = ()

    # --------------------------------------------------------------------------------------- model
    def eos_token_ids(self, model: torch.nn.Module) -> list[int]:
        """Every token that ends a completion: the generation config's EOS ids and the tokenizer's."""
        ids = model.generation_config.eos_token_id
        ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        if not ids:
            raise ValueError("The model has no EOS token: set `eos_token_id` in its generation_config.json.")
        return ids

    def suppressed_token_ids(self, model: torch.nn.Module) -> list[int]:
        """Tokens a completion may never contain: image placeholders and other special tokens (EOS aside).

        A sampled image placeholder would make the next forward pass expect an image that is not there
        (a random-weight model samples them readily). The same tokens are masked out of the log-probs,
        so they are those of the distribution actually sampled from.
        """
        special = set(self.tokenizer.all_special_ids)
        for name in (
            "image_token_id",
            "image_token_index",
            "video_token_id",
            "vision_start_token_id",
            "vision_end_token_id",
        ):
            token_id = getattr(model.config, name, None)
            if isinstance(token_id, int):
                special.add(token_id)
        return sorted(special - set(self.eos_token_ids(model)))

    def position_kwargs(self, attention_mask: Tensor) -> dict[str, Tensor]:
        """Position ids for a left-padded forward pass, as ``generate`` computes them.

        Passing them keeps the training forward pass identical to the sampling one; without them
        left padding would shift every position.
        """
        position_ids = attention_mask.long().cumsum(-1) - 1
        return {"position_ids": position_ids.clamp(min=0)}

    def vision_dtype(self, model: torch.nn.Module) -> torch.dtype:
        return next(model.parameters()).dtype

    # ------------------------------------------------------------------------- shared image encoding
    def attach(self, model: torch.nn.Module) -> None:
        """Serve ``model``, the policy as it will train (after freezing and LoRA).

        When nothing that computes the image features trains (``image_feature_paths``: LoRA adapts the language
        model only; full fine-tuning with the vision side frozen), a prompt's features are the same in every pass
        of ``model`` over it: sampling, the policy passes and, with LoRA, the reference pass (the same network with
        its adapters off). Prompt batches made from then on keep them (``PromptBatch.feature_memo``), so each image
        is encoded once per step; any other model (a separate reference copy) encodes its own.
        """
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under PEFT's wrapper
        trains = any(p.requires_grad for module in self.image_feature_modules(base) for p in module.parameters())
        self._feature_model = model if self.shared_encoding and not trains else None

    @property
    def reuses_image_features(self) -> bool:
        """Whether one encoding of each prompt's image serves every pass of a step (see ``attach``)."""
        return self._feature_model is not None

    def image_features(self, model: torch.nn.Module, prompts: PromptBatch, indices: list[int]) -> list[Any]:
        """The projected image features of each of the given prompts, encoded in one vision-tower call."""
        raise NotImplementedError

    def feature_inputs(self, prompts: PromptBatch, features: dict[int, Any], prompt_index: list[int]) -> dict:
        """Model keyword arguments that place each sequence's image features (``features[prompt]``)."""
        raise NotImplementedError

    def visual_inputs(self, model: torch.nn.Module, prompts: PromptBatch, prompt_index: list[int]) -> dict[str, Any]:
        """The image inputs of a forward pass over sequences of the given prompts (repeats allowed): the projected
        features of each distinct prompt, encoded once, or kept from an earlier pass of the attached model."""
        unique = list(dict.fromkeys(prompt_index))
        memo = prompts.feature_memo if model is self._feature_model else None
        if memo is None:
            features = dict(zip(unique, self.image_features(model, prompts, unique), strict=True))
        else:
            missing = [p for p in unique if p not in memo]
            if missing:
                with torch.no_grad():
                    memo.update(zip(missing, self.image_features(model, prompts, missing), strict=True))
            features = {p: memo[p] for p in unique}
        return self.feature_inputs(prompts, features, prompt_index)

    # ------------------------------------------------------------------------ shared prompt encoding
    def prefill(
        self,
        model: torch.nn.Module,
        prompts: PromptBatch,
        prompt_index: list[int],
        *,
        growing: bool,
        room: int = 0,
    ) -> DynamicCache:
        """KV cache of each distinct prompt minus its last token, computed once and copied to its sequences.

        Row j of the cache belongs to sequence j (prompt ``prompt_index[j]``). The model then only processes each
        sequence's last prompt token (a text token) and what follows, so neither the image nor the prompt is
        encoded once per sample. ``growing``: a cache that sampling extends token by token, with space kept for
        ``room`` tokens after the prompt (written in place rather than concatenated); else a read-only one
        for a log-prob pass, through which gradients flow into the one shared prefill, also under gradient
        checkpointing (``prefix_cache``).
        """
        unique = list(dict.fromkeys(prompt_index))
        inputs = prompts.token_inputs(unique)
        head = {key: value[:, :-1] for key, value in inputs.items()}
        capture = CaptureCache()
        with cache_through_checkpointing(model):
            model(
                **head,
                **self.position_kwargs(head["attention_mask"]),
                **self.visual_inputs(model, prompts, unique),
                cache=capture,
                use_cache=False,  # the cache is ours and passed in: nothing for the model to create or return
                logits_to_keep=1,
            )
        rows = torch.tensor([unique.index(p) for p in prompt_index], device=inputs["input_ids"].device)
        self.share_prefill_state(model, rows, num_prompts=len(unique))
        return capture.shared(rows, growing=growing, config=model.config, room=room)

    def share_prefill_state(self, model: torch.nn.Module, rows: Tensor, num_prompts: int) -> None:
        """Copy whatever per-prompt state the model kept from ``prefill`` (``num_prompts`` rows) to the sequences,
        sequence j getting row ``rows[j]``, as the cache is copied. Nothing to copy unless a family says so."""

    def continuation_positions(self, model: torch.nn.Module, attention_mask: Tensor, start: int) -> dict[str, Tensor]:
        """Position keyword arguments for the tokens from ``start`` on, continuing from a prompt cache that
        ``prefill`` just made (``attention_mask`` covers the whole sequences)."""
        return {key: value[..., start:] for key, value in self.position_kwargs(attention_mask).items()}

    @torch.no_grad()
    def generate(
        self,
        model: torch.nn.Module,
        prompts: PromptBatch,
        prompt_index: list[int],
        *,
        max_new_tokens: int,
        min_new_tokens: int = 0,
        do_sample: bool,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int | None = None,
    ) -> Tensor:
        """Sample one completion for each entry of ``prompt_index``; returns (N, C) right-padded ids.

        With shared encoding each distinct prompt, image included, is encoded and prefilled once and its KV cache
        copied to its samples; the unshared reference hands every sequence its pixels and whole prompt.
        """
        inputs = prompts.token_inputs(prompt_index)
        sampling = {"temperature": temperature, "top_p": top_p, "top_k": top_k} if do_sample else {}
        if self.shared_encoding:
            # room for every token fed after the prefill: the prompt's last token and all but the last sampled one
            prompt = {"cache": self.prefill(model, prompts, prompt_index, growing=True, room=max_new_tokens)}
        else:
            prompt = prompts.visual_for(prompt_index, self.vision_dtype(model))
        output = model.generate(
            **inputs,
            **prompt,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            do_sample=do_sample,
            use_cache=True,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.eos_token_ids(model),
            suppress_tokens=self.suppressed_token_ids(model),
            **sampling,
        )
        return output[:, inputs["input_ids"].shape[1] :]

    def completion_logps(
        self,
        model: torch.nn.Module,
        prompts: PromptBatch,
        prompt_index: list[int],
        completion_ids: Tensor,
        completion_mask: Tensor,
        *,
        temperature: float | Sequence[float] = 1.0,
        with_entropy: bool | Literal["grad"] = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Per-token log-probs (N, C) of the given completion tokens under ``model``, and their entropy.

        Logits are divided by the sampling temperature, so the log-probs are those of the distribution
        the completions were drawn from; a sequence of N temperatures gives each row its own (the gold completions
        of ``loss.sft_coef`` are scored at 1.0 in the same pass as the sampled ones, whose prompts they share; the
        head runs once per run of equal temperatures). Padding is trimmed to the longest prompt and completion of these
        sequences. The model returns its last hidden states, and the language-model head runs on the completion
        positions a chunk at a time (``head_logps``), so no (N, C, V) logits ever exist, in the forward pass or
        the backward. Positions past the trimmed width come back as 0.

        Returns:
            logps: (N, C) float32.
            entropy: (N, C) float32 entropy of each position's distribution, or None; without gradient for
            ``with_entropy=True``, with it for ``"grad"`` (``head_logps``).
        """
        num_seqs, full_width = completion_ids.shape
        width = max(int(completion_mask.sum(-1).max().item()), 1) if completion_mask.numel() else 1
        inputs = prompts.token_inputs(prompt_index, completion_mask[:, :width])
        prompt_width = inputs["input_ids"].shape[1]
        inputs["input_ids"] = torch.cat([inputs["input_ids"], completion_ids[:, :width]], dim=1)
        forward = self._forward_from_shared_prompts if self.shared_encoding else self._forward_whole_sequences
        hidden = forward(model, prompts, prompt_index, inputs, prompt_width)
        # The hidden state at position t predicts token t + 1: the `width` before the last one score the completions.
        hidden = hidden[:, -(width + 1) : -1, :]
        token_logps, token_entropy = self._head(model, hidden, completion_ids[:, :width], temperature, with_entropy)
        logps = torch.zeros(num_seqs, full_width, dtype=torch.float32, device=hidden.device)
        # Positions after the first EOS hold padding, which may be a suppressed (-inf) token: zero them
        # here so that no -inf ever meets a 0 mask downstream (that product is NaN).
        logps[:, :width] = token_logps.float().masked_fill(~completion_mask[:, :width].bool(), 0.0)
        entropy = None
        if token_entropy is not None:
            entropy = torch.zeros_like(logps)
            entropy[:, :width] = token_entropy
        return logps, entropy

    def _head(
        self,
        model: torch.nn.Module,
        hidden: Tensor,
        tokens: Tensor,
        temperature: float | Sequence[float],
        with_entropy: bool | Literal["grad"],
    ) -> tuple[Tensor, Tensor | None]:
        """``head_logps`` of ``tokens`` from ``hidden``, once per run of rows of equal temperature."""
        suppressed = torch.tensor(self.suppressed_token_ids(model), device=hidden.device)
        parts = [
            head_logps(
                output_head(model),
                hidden[start:stop],
                tokens[start:stop],
                suppressed,
                value,
                with_entropy=with_entropy,
                chunk_size=chunked_head.LOGITS_CHUNK_SIZE,  # read at each call: the tests patch it there
            )
            for start, stop, value in _equal_runs(temperature, len(tokens))
        ]
        if len(parts) == 1:
            return parts[0]
        entropies = [entropy for _, entropy in parts]
        return torch.cat([logps for logps, _ in parts]), None if entropies[0] is None else torch.cat(entropies)

    def _forward_from_shared_prompts(
        self,
        model: torch.nn.Module,
        prompts: PromptBatch,
        prompt_index: list[int],
        inputs: dict[str, Tensor],
        prompt_width: int,
    ) -> Tensor:
        """The forward pass of ``completion_logps``, up to the last hidden states (N, 1 + C, H) of each sequence's
        last prompt token and its completion: each distinct prompt (image included) runs once; each sequence
        continues from its copy of that cache."""
        cache = self.prefill(model, prompts, prompt_index, growing=False)
        with cache_through_checkpointing(model):
            return backbone(model)(
                input_ids=inputs["input_ids"][:, prompt_width - 1 :],
                attention_mask=inputs["attention_mask"],
                **self.continuation_positions(model, inputs["attention_mask"], prompt_width - 1),
                cache=cache,
                use_cache=False,  # the cache is ours and passed in: nothing for the model to create or return
            ).last_hidden_state

    def _forward_whole_sequences(
        self,
        model: torch.nn.Module,
        prompts: PromptBatch,
        prompt_index: list[int],
        inputs: dict[str, Tensor],
        prompt_width: int,
    ) -> Tensor:
        """The unshared reference of ``_forward_from_shared_prompts``: every sequence runs its image and its whole
        prompt; returns the last hidden states (N, P + C, H)."""
        return backbone(model)(
            **inputs,
            **self.position_kwargs(inputs["attention_mask"]),
            **prompts.visual_for(prompt_index, self.vision_dtype(model)),
            use_cache=False,
        ).last_hidden_state


def _equal_runs(values: float | Sequence[float], length: int) -> list[tuple[int, int, float]]:
    """``(start, stop, value)`` of each run of equal values in a sequence of ``length`` (one value: one run)."""
    if isinstance(values, (int, float)):
        return [(0, length, float(values))]
    values = [float(value) for value in values]
    if len(values) != length:
        raise ValueError(f"{len(values)} temperatures for {length} sequences; give one per sequence, or one for all")
    starts = [i for i in range(length) if i == 0 or values[i] != values[i - 1]]
    return [(start, stop, values[start]) for start, stop in zip(starts, [*starts[1:], length], strict=True)]


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model, also inside PEFT's wrapper (whose LoRA layers sit in it, in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The ``*ForConditionalGeneration`` model without its language-model head (vision tower, projector, language
    model): the same keyword arguments, and ``last_hidden_state`` where the whole model has ``logits``."""
    return _unwrapped(model).base_model


def output_head(model: torch.nn.Module) -> torch.nn.Linear:
    """The language-model head, hidden states to logits (its weight tied to the input embeddings where the
    checkpoint says so).

    Raises:
        ConfigError: the head is not a plain linear layer (e.g. wrapped to be adapted or saved by PEFT).
    """
    head = _unwrapped(model).get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise ConfigError(
            f"The language-model head is a {type(head).__name__}, not a plain torch.nn.Linear: log-probs are computed "
            "from its weight a chunk of positions at a time. Leave lm_head out of the LoRA target and saved modules."
        )
    return head


def resolution_range(
    names: tuple[str, str], given: tuple[int | None, int | None], loaded: tuple[int, int]
) -> tuple[int, int]:
    """The (low, high) bounds of an image-resolution range named ``names``: the ``given`` ones where not None, else
    the checkpoint's (``loaded``). Raises a ConfigError that names both unless low <= high."""
    low, high = (loaded[i] if given[i] is None else given[i] for i in (0, 1))
    if low > high:
        where = ["" if value is not None else ", the checkpoint's value" for value in given]
        raise ConfigError(
            f"{names[0]} ({low}{where[0]}) is above {names[1]} ({high}{where[1]}); give {names[0]} <= {names[1]}."
        )
    return low, high


def left_pad(sequences: list[Tensor], pad_id: int) -> tuple[Tensor, Tensor]:
    """Stack 1-D id tensors into (B, L) left-padded ids and attention mask."""
    length = max(s.shape[0] for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, length - seq.shape[0] :] = seq
        mask[i, length - seq.shape[0] :] = 1
    return ids, mask
