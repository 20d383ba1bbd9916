"""The growing prompt cache of sampling (``GrowingLayer``): the keys and values that a concatenating
``DynamicLayer`` holds, written in place, and the same sampled tokens as sampling through concatenation."""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicLayer

from grpo_lightning.adapters.prefix_cache import CaptureCache, GrowingLayer
from tests.helpers import FAMILIES, G, first_batch, make_module


def _states(batch: int, tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, 2, tokens, 4, generator=generator, dtype=torch.float64) for _ in range(2))


def test_growing_layer_holds_what_concatenation_holds_in_one_buffer_then_falls_back():
    prefix = _states(3, 5, seed=0)
    growing, plain = GrowingLayer(*prefix, room=4), DynamicLayer()
    plain.update(*prefix)
    key_address = growing.keys.data_ptr()
    for step, tokens in enumerate((1, 2, 1, 3, 1)):  # 4 fit in the room, then concatenation
        new = _states(3, tokens, seed=step + 1)
        got, expected = growing.update(*new), plain.update(*new)
        for a, b in zip(got, expected, strict=True):
            assert torch.equal(a, b)
        assert growing.get_seq_length() == plain.get_seq_length() == expected[0].shape[-2]
        in_room = plain.get_seq_length() <= 5 + 4
        assert (growing.keys.data_ptr() == key_address) is in_room  # written in place while it fits
    assert growing.get_seq_length() == 13


def test_growing_layer_follows_a_reordered_batch_and_a_crop():
    prefix = _states(4, 3, seed=0)
    growing, plain = GrowingLayer(*prefix, room=8), DynamicLayer()
    plain.update(*prefix)
    for layer in (growing, plain):
        layer.update(*_states(4, 1, seed=1))
        layer.crop(-1)  # back to the prefix: the next token overwrites the cropped one
        layer.update(*_states(4, 2, seed=2))
        layer.batch_select_indices(torch.tensor([2, 0]))  # new tensors: no longer the buffer's rows
    for seed in (3, 4):
        for a, b in zip(
            growing.update(*_states(2, 1, seed=seed)), plain.update(*_states(2, 1, seed=seed)), strict=True
        ):
            assert torch.equal(a, b)


def test_capture_cache_gives_growing_layers_only_with_room():
    capture = CaptureCache()
    keys, values = _states(2, 3, seed=0)
    capture.update(keys, values, 0)
    rows = torch.tensor([0, 0, 1])
    with_room = capture.shared(rows, growing=True, room=5)
    without = capture.shared(rows, growing=True)
    assert isinstance(with_room.layers[0], GrowingLayer) and type(without.layers[0]) is DynamicLayer
    assert torch.equal(with_room.layers[0].keys, keys[rows]) and torch.equal(with_room.layers[0].values, values[rows])


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_writes_in_place_and_draws_the_tokens_of_concatenation(assets, data_kwargs, family, monkeypatch):
    """With a fixed seed, sampling from the in-place cache gives exactly the tokens of the concatenating cache
    (``GrowingLayer`` told that nothing fits in place), greedy and sampled."""
    module = make_module(assets, family, sampling=dict(num_generations=G, max_completion_length=12))
    module.configure_model()
    batch = first_batch(data_kwargs)
    in_place = []
    update = GrowingLayer.update

    def counting_update(self, key_states, value_states, *args, **kwargs):
        in_place.append(self._in_buffers(key_states.shape[-2]))
        return update(self, key_states, value_states, *args, **kwargs)

    monkeypatch.setattr(GrowingLayer, "update", counting_update)
    for do_sample in (False, True):
        torch.manual_seed(3)
        fast = module.rollouts.generate(batch, num_generations=G, do_sample=do_sample).completion_ids
        assert in_place and all(in_place), "every token's keys and values go into the room kept for them"
        in_place.clear()
        with monkeypatch.context() as patch:
            patch.setattr(GrowingLayer, "_in_buffers", lambda self, new_tokens: False)
            torch.manual_seed(3)
            concatenated = module.rollouts.generate(batch, num_generations=G, do_sample=do_sample).completion_ids
        in_place.clear()
        assert fast.shape[1] > 1
        assert torch.equal(fast, concatenated), do_sample
