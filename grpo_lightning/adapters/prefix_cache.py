"""A prompt's KV cache computed once and shared by its G sequences, in sampling and in gradient passes.

``CaptureCache`` records each layer's keys and values while the distinct prompts are prefilled; ``shared``
then gives each sequence its prompt's rows, either as a growing ``DynamicCache`` (sampling) or as a
``ReadOnlyPrefixCache`` (log-prob passes), whose layers prepend the prefix to the new keys and values without
storing anything. The growing cache's layers keep room for the tokens to come after the prefix and write each new
token's keys and values into it (``GrowingLayer``), where a plain ``DynamicLayer`` would concatenate, copying the
whole cache at every token: the same keys and values, read in place.

Gradient checkpointing replays every layer's forward in the backward pass; the capture cache and the read-only
cache give the same result when replayed (the growing cache would not, but sampling runs without gradients, so
nothing replays it). ``cache_through_checkpointing`` lets the checkpointed layers keep
these caches (transformers otherwise drops any cache there), and gradients reach the one shared prefill through
the copies. That needs non-reentrant checkpointing, whose backward follows the recorded graph: the reentrant
kind runs the layers under ``no_grad`` and would silently cut the prefix off from the gradient, so it is
refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.modeling_layers import GradientCheckpointingLayer


class _CaptureLayer(DynamicLayer):
    """Keeps the last keys and values it was given and returns them as they are: a replay stores the same again."""

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys, self.values = key_states, value_states
        return key_states, value_states


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` that starts from a prefix and writes the keys and values of later tokens into room kept after
    it, returning views of one buffer (the same values that concatenation returns). Past the room, or once the keys are
    no longer that buffer's (a batch reordered or selected by ``generate``), it concatenates as ``DynamicLayer`` does.

    Args:
        keys: (N, heads, P, head_dim) prefix keys; ``values`` likewise.
        room: tokens that fit after the prefix before any concatenation.
    """

    def __init__(self, keys: Tensor, values: Tensor, room: int):
        super().__init__()
        self.lazy_initialization(keys, values)
        length = keys.shape[-2]
        self._buffers = []
        for tensor in (keys, values):
            buffer = tensor.new_empty(*tensor.shape[:-2], length + room, tensor.shape[-1])
            buffer[..., :length, :] = tensor
            self._buffers.append(buffer)
        self.keys, self.values = (buffer[..., :length, :] for buffer in self._buffers)

    def _in_buffers(self, new_tokens: int) -> bool:
        """Whether the keys and values are still the buffers' leading rows, with room for ``new_tokens`` more."""
        return all(
            tensor.data_ptr() == buffer.data_ptr()
            and tensor.shape[:-2] == buffer.shape[:-2]
            and tensor.stride() == buffer.stride()
            and tensor.shape[-2] + new_tokens <= buffer.shape[-2]
            for tensor, buffer in zip((self.keys, self.values), self._buffers, strict=True)
        )

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self._in_buffers(key_states.shape[-2]):
            return super().update(key_states, value_states, *args, **kwargs)
        start = self.keys.shape[-2]
        stop = start + key_states.shape[-2]
        (key_buffer, value_buffer) = self._buffers
        key_buffer[..., start:stop, :] = key_states
        value_buffer[..., start:stop, :] = value_states
        self.keys, self.values = key_buffer[..., :stop, :], value_buffer[..., :stop, :]
        return self.keys, self.values


class _ReadOnlyPrefixLayer(DynamicLayer):
    """A fixed prefix, prepended to each call's keys and values, which are not stored: a replay reads the same."""

    def __init__(self, keys: Tensor, values: Tensor):
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


class ReadOnlyPrefixCache(DynamicCache):
    """Each layer's prefix keys and values (one row per sequence), read by every forward pass and never grown."""

    def __init__(self, prefix: list[tuple[Tensor, Tensor]]):
        Cache.__init__(self, layers=[_ReadOnlyPrefixLayer(keys, values) for keys, values in prefix])


class CaptureCache(DynamicCache):
    """Records the keys and values of one prefill (the distinct prompts), layer by layer."""

    def __init__(self) -> None:
        Cache.__init__(self, layer_class_to_replicate=_CaptureLayer)

    def shared(self, rows: Tensor, *, growing: bool, config=None, room: int = 0) -> DynamicCache:
        """The prefix of each sequence (row ``rows[j]`` of the prefill for sequence j): a ``DynamicCache`` that
        sampling grows (``growing``; ``config`` gives its layer types; its full-attention layers keep ``room`` tokens
        of space after the prefix, see ``GrowingLayer``), else a ``ReadOnlyPrefixCache``."""
        prefix = [(layer.keys[rows], layer.values[rows]) for layer in self.layers]
        if not growing:
            return ReadOnlyPrefixCache(prefix)
        cache = DynamicCache(ddp_cache_data=prefix, config=config)
        if room > 0:
            # Only the plain full-attention layers: sliding-window layers drop old tokens and keep their own rules.
            cache.layers = [
                GrowingLayer(layer.keys, layer.values, room) if type(layer) is DynamicLayer else layer
                for layer in cache.layers
            ]
        return cache


@contextlib.contextmanager
def cache_through_checkpointing(model: torch.nn.Module) -> Iterator[None]:
    """Let the model's checkpointed layers keep the cache they are given (only ours: they write nothing twice).

    Raises:
        RuntimeError: a layer is checkpointed the reentrant way (gradients would not reach the shared prefix).
    """
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    replaying = torch.is_grad_enabled()  # without gradients nothing is checkpointed (sampling, reference passes)
    for layer in layers:
        if replaying and layer.training and layer.gradient_checkpointing and _is_reentrant(layer):
            raise RuntimeError(
                f"{type(layer).__name__} uses reentrant gradient checkpointing, which would cut the shared prompt "
                "prefix off from the gradient. Enable checkpointing with activation_checkpointing_kwargs="
                "{'use_reentrant': False}, as GRPOModule's gradient_checkpointing option does."
            )
    before = [m.__dict__.get("_can_checkpoint_with_cache") for m in layers]
    for layer in layers:
        layer._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for layer, value in zip(layers, before, strict=True):
            if value is None:
                del layer._can_checkpoint_with_cache
            else:
                layer._can_checkpoint_with_cache = value


def _is_reentrant(layer: GradientCheckpointingLayer) -> bool:
    """Whether the layer's checkpoint function is torch's reentrant kind (its default when not told)."""
    function = getattr(layer, "_gradient_checkpointing_func", None)
    return bool(getattr(function, "keywords", {}).get("use_reentrant", True))
