"""Shared image and prompt encoding: each counted where it can be, and each shown to leave the result of the
unshared reference path (``VLMAdapter(processor, shared_encoding=False)``) unchanged."""

from __future__ import annotations

import pytest
import torch

from grpo_lightning.module import GRPOModule
from tests.helpers import FAMILIES, B, G, first_batch, fit, make_module, reference_adapter


@pytest.fixture
def batch(data_kwargs):
    """B prompts whose images differ in shape, so that InternVL's prompts differ in tile count (dynamic tiling: 5 and
    1, see ``tiles_per_prompt``) and Qwen2-VL's in image tokens and RoPE offsets (a prompt's sequences must get that
    prompt's tiles and offset, not another's)."""
    batch = first_batch(data_kwargs)
    batch["image"] = [batch["image"][0], batch["image"][1].resize((64, 64))]  # Qwen2-VL: offsets -8 and -12
    return batch


def tiles_per_prompt(prompts) -> list[int]:
    """InternVL: how many tiles (thumbnail included) each prompt's image became."""
    return [visual["pixel_values"].shape[0] for visual in prompts.visual]


def count_images(module, model=None) -> list[int]:
    """Record how many images each vision-tower call encodes, as InternVL's tiles or Qwen2-VL's images (in ``model``,
    by default the module's; give the base model under PEFT's wrapper)."""
    calls: list[int] = []
    tower = module.adapter.vision_tower(module.model if model is None else model)
    tower.register_forward_pre_hook(lambda mod, args, kwargs: calls.append(_images_in(args, kwargs)), with_kwargs=True)
    return calls


def _images_in(args, kwargs) -> int:
    pixels = kwargs.get("pixel_values", args[0] if args else kwargs.get("hidden_states"))
    grid = kwargs.get("grid_thw")
    return int(grid.shape[0]) if grid is not None else int(pixels.shape[0])


def once_each(module, batch) -> int:
    """What ``count_images`` records for encoding each of the batch's images once (InternVL: their tiles)."""
    prompts = module.adapter.prepare_prompts(batch["image"], batch["prompt"])
    visual = prompts.visual_for(list(range(len(prompts))))
    return _images_in((), {"pixel_values": visual["pixel_values"], "grid_thw": visual.get("image_grid_thw")})


def policy_pass(module: GRPOModule, rollout, advantages: torch.Tensor):
    """The rollout's log-probs under the policy, a per-sequence-mean loss weighted by ``advantages``, its backward:
    (log-probs, loss, every parameter's gradient flattened)."""
    module.model.zero_grad(set_to_none=True)
    logps, _ = module.adapter.completion_logps(
        module.model,
        rollout.prompts,
        rollout.prompt_index.tolist(),
        rollout.completion_ids,
        rollout.completion_mask,
    )
    mask = rollout.completion_mask.float()
    loss = -((logps * mask).sum(-1) / mask.sum(-1).clamp(min=1) * advantages).mean()
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in module.model.parameters() if p.grad is not None])
    return logps.detach(), loss.detach(), grads


def unshared(module: GRPOModule) -> GRPOModule:
    """The same module on the unshared reference path."""
    module.adapter = reference_adapter(module)
    return module


def without_feature_reuse(module: GRPOModule) -> GRPOModule:
    """The same module with an adapter attached to no model: shared encoding, but image features encoded anew in
    every pass (not kept across the passes of a step)."""
    module.adapter = type(module.adapter)(module.adapter.processor)
    return module


@pytest.mark.parametrize("family", FAMILIES)
def test_the_vision_encoder_runs_once_per_prompt_in_rollout_reference_and_policy(assets, data_kwargs, tmp_path, family):
    module = make_module(assets, family, sampling=dict(num_generations=G), loss=dict(micro_batch_size=G, beta=0.04))
    module.configure_model()
    calls = count_images(module)
    reference_calls = []
    with module.reference(module.model) as reference:
        tower = module.adapter.vision_tower(reference)
        tower.register_forward_pre_hook(
            lambda mod, args, kwargs: reference_calls.append(_images_in(args, kwargs)), with_kwargs=True
        )
    fit(module, data_kwargs, tmp_path, steps=1, batch_size=B)
    once = once_each(module, first_batch(data_kwargs))
    # rollout: the B images once (one prefill per prompt, its cache shared by the G samples); policy update: one
    # micro-batch per prompt (micro_batch_size = G), the B images once.
    assert sum(calls) == once + once, calls
    assert sum(reference_calls) == once, reference_calls
    unshared_module = make_module(
        assets,
        family,
        sampling=dict(num_generations=G),
        loss=dict(micro_batch_size=G, beta=0.0),
    )
    unshared_module.configure_model()
    unshared(unshared_module)
    unshared_calls = count_images(unshared_module)
    fit(unshared_module, data_kwargs, tmp_path / "unshared", steps=1, batch_size=B)
    assert sum(unshared_calls) == 2 * G * once  # unshared: every sequence encodes its image, twice


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_from_a_shared_prompt_cache_gives_the_unshared_tokens(assets, batch, family):
    module = make_module(assets, family, sampling=dict(num_generations=G, max_completion_length=10))
    module.configure_model()
    adapters = {"shared": module.adapter, "unshared": reference_adapter(module)}
    for do_sample in (False, True):
        rollouts = {}
        for name, adapter in adapters.items():
            module.adapter = adapter
            torch.manual_seed(5)
            rollouts[name] = module.rollouts.generate(batch, num_generations=G, do_sample=do_sample)
        assert torch.equal(rollouts["shared"].completion_ids, rollouts["unshared"].completion_ids), do_sample


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen2_vl_samples_from_a_shared_cache_at_the_unshared_multimodal_positions(assets, batch, family):
    """Qwen2-VL's RoPE offsets follow the copied cache: every decoding step sees the positions (all three axes)
    that unshared sampling gives it."""
    from grpo_lightning.adapters.qwen2_vl import _rope_state

    module = make_module(
        assets,
        family,
        sampling=dict(num_generations=G, max_completion_length=6, min_completion_length=6),
    )
    module.configure_model()
    seen: list[torch.Tensor] = []

    def axes(positions: torch.Tensor) -> torch.Tensor:
        """The (3, N, L) RoPE positions: given as (3 + 1 text row, N, L), (3, N, L) or (1, N, L) for all three."""
        return positions[-3:] if positions.shape[0] >= 3 else positions.expand(3, -1, -1)

    module.model.model.language_model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(axes(kwargs["position_ids"]).clone()), with_kwargs=True
    )
    module.rollouts.generate(batch, num_generations=G, do_sample=False)
    shared, seen[:] = list(seen), []
    unshared(module).rollouts.generate(batch, num_generations=G, do_sample=False)
    baseline = seen
    deltas = _rope_state(module.model).rope_deltas.flatten().tolist()  # per sequence, left by the unshared path
    assert len(set(deltas)) == B and 0 not in deltas, deltas  # distinct per prompt and not trivially zero
    # shared: the B prompts' prefill, the last prompt token of each of the B*G sequences, then one step per token;
    # unshared: the B*G whole prompts, then one step per token
    assert shared[0].shape[1] == B and baseline[0].shape[1] == B * G
    assert len(shared) == len(baseline) + 1 == 6 + 1
    assert torch.equal(shared[1], baseline[0][..., -1:])
    for step, (a, b) in enumerate(zip(shared[2:], baseline[1:], strict=True)):
        assert torch.equal(a, b), step


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_image_features_and_prompt_cache_leave_loss_and_gradients_unchanged(assets, batch, family):
    """Same rollout through the shared path (image encoded and prompt prefilled once per prompt, its cache copied
    to the G sequences, gradients flowing back through the copies) and the unshared one: equal log-probs, loss and
    gradients."""
    module = make_module(assets, family, sampling=dict(num_generations=G), loss=dict(beta=0.0))
    module.configure_model()
    torch.manual_seed(0)
    rollout = module.rollouts.generate(batch, num_generations=G, do_sample=True)
    if family == "internvl":
        assert tiles_per_prompt(rollout.prompts) == [5, 1]  # a 2x2 grid and its thumbnail, and a single tile
    advantages = torch.linspace(-1, 1, len(rollout.completions))
    results = []
    for adapter in (module.adapter, reference_adapter(module)):
        module.adapter = adapter
        results.append(policy_pass(module, rollout, advantages))
    (logps_a, loss_a, grads_a), (logps_b, loss_b, grads_b) = results
    torch.testing.assert_close(logps_a, logps_b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    assert grads_a.shape == grads_b.shape and grads_a.abs().max() > 0
    torch.testing.assert_close(grads_a, grads_b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family, lora_r", [*((family, 0) for family in FAMILIES), ("internvl", 4)])
def test_the_shared_prefix_under_gradient_checkpointing_gives_the_unshared_loss_and_gradients(
    assets, batch, family, lora_r
):
    """With gradient checkpointing, the prompt is still prefilled once per prompt in the policy pass: its cache is
    read-only, so the layers' replay in the backward pass reads the same prefix; log-probs, loss and gradients
    (of the LoRA adapters alone with LoRA) equal the unshared path's, and the replay did happen."""
    # no LoRA dropout: its random masks would differ between the two paths, which run different batch shapes
    module = make_module(
        assets,
        family,
        gradient_checkpointing=True,
        sampling=dict(num_generations=G),
        loss=dict(beta=0.0),
        lora=dict(r=lora_r, dropout=0.0),
    )
    module.configure_model()
    assert module.model.is_activation_checkpointing
    without_feature_reuse(module)  # LoRA's features once per step: its own test below; here every pass encodes
    torch.manual_seed(0)
    rollout = module.rollouts.generate(batch, num_generations=G, do_sample=True)
    if family == "internvl":
        assert tiles_per_prompt(rollout.prompts) == [5, 1]
    module.model.train()
    base = module.model.get_base_model() if lora_r else module.model  # under PEFT's wrapper with LoRA
    language_model = base.get_submodule(module.adapter.language_model_path)
    attention_calls: list[int] = []  # the attention runs inside the checkpointed layer: once more on replay
    language_model.layers[0].self_attn.register_forward_pre_hook(
        lambda mod, args, kwargs: attention_calls.append(kwargs["hidden_states"].shape[0]), with_kwargs=True
    )
    images = count_images(module, base)
    advantages = torch.linspace(-1, 1, len(rollout.completions))
    results = []
    for adapter in (module.adapter, reference_adapter(module)):
        module.adapter = adapter
        attention_calls.clear()
        images.clear()
        results.append((*policy_pass(module, rollout, advantages), list(attention_calls), sum(images)))
    (logps_a, loss_a, grads_a, calls_a, images_a), (logps_b, loss_b, grads_b, calls_b, images_b) = results
    # shared: the B prompts' prefill and the B*G continuations, each replayed; unshared: the B*G sequences, replayed
    assert calls_a == [B, B * G, B * G, B] and calls_b == [B * G, B * G], (calls_a, calls_b)
    assert (images_a, images_b) == (once_each(module, batch), G * once_each(module, batch))
    torch.testing.assert_close(logps_a, logps_b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    assert grads_a.shape == grads_b.shape and grads_a.abs().max() > 0
    torch.testing.assert_close(grads_a, grads_b, rtol=1e-4, atol=1e-6)
    if lora_r:
        trainable = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
        assert grads_a.numel() == trainable < sum(p.numel() for p in module.model.parameters()) // 10


def test_reentrant_gradient_checkpointing_is_refused_where_it_would_cut_the_prefix_off(assets, batch):
    """The reentrant kind runs the layers without a graph, so the shared prefix would get no gradient: the policy
    pass refuses it with what to do; sampling (no gradients, nothing replayed) still shares the cache."""
    module = make_module(assets, "internvl", sampling=dict(num_generations=G))
    module.configure_model()
    module.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    rollout = module.rollouts.generate(batch, num_generations=G, do_sample=False)
    module.model.train()
    with pytest.raises(RuntimeError, match=r"reentrant gradient checkpointing.*use_reentrant': False"):
        module.adapter.completion_logps(
            module.model,
            rollout.prompts,
            rollout.prompt_index.tolist(),
            rollout.completion_ids,
            rollout.completion_mask,
        )


@pytest.mark.parametrize("family", FAMILIES)
def test_with_lora_each_image_is_encoded_once_per_step_and_the_update_is_unchanged(
    assets, data_kwargs, tmp_path, family
):
    """With LoRA the vision tower and projector are frozen and the reference is the same network with its adapters
    off: sampling, reference and policy passes get the same image features, so one encoding of the B images serves
    the whole step instead of one per pass (3 of them), and the step's update is the same."""
    runs = {}
    for reuse in (True, False):
        torch.manual_seed(0)  # the LoRA matrices start from the global RNG
        module = make_module(
            assets,
            family,
            sampling=dict(num_generations=G),
            loss=dict(micro_batch_size=G, beta=0.04),
            lora=dict(r=4, dropout=0.0),
        )
        module.configure_model()
        assert module.adapter.reuses_image_features
        if not reuse:
            without_feature_reuse(module)
        images = count_images(module, module.model.get_base_model())
        fit(module, data_kwargs, tmp_path / str(reuse), steps=1, batch_size=B)
        trained = {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}
        runs[reuse] = (sum(images), trained)
    (images_once, weights_once), (images_each, weights_each) = runs[True], runs[False]
    once = once_each(module, first_batch(data_kwargs))
    assert (images_once, images_each) == (once, 3 * once)
    assert weights_once.keys() == weights_each.keys() and weights_once
    assert any(w.abs().max() > 0 for name, w in weights_once.items() if "lora_B" in name)  # the step trained them
    for name in weights_once:
        torch.testing.assert_close(weights_once[name], weights_each[name], rtol=1e-5, atol=1e-7)


def test_without_lora_image_features_are_encoded_in_every_pass(assets):
    """Full fine-tuning trains the vision side and keeps a separate reference: nothing may be reused across passes."""
    module = make_module(assets, "internvl", freeze_vision_modules=True)
    module.configure_model()
    assert module.adapter.reuses_image_features is False  # the projector still trains


def test_with_every_image_feature_module_frozen_the_policy_encodes_each_image_once_per_step(
    assets, data_kwargs, tmp_path
):
    """Full fine-tuning with Qwen2-VL's vision tower (its projector included) frozen: sampling and the policy pass
    share one encoding per image; the separate reference model encodes its own, with its own weights."""
    module = make_module(
        assets,
        "qwen2_vl",
        freeze_vision_modules=True,
        sampling=dict(num_generations=G),
        loss=dict(micro_batch_size=G, beta=0.04),
    )
    module.configure_model()
    assert module.adapter.reuses_image_features
    calls, reference_calls = count_images(module), count_images(module, module.reference.model)
    fit(module, data_kwargs, tmp_path, steps=1, batch_size=B)
    once = once_each(module, first_batch(data_kwargs))
    assert (sum(calls), sum(reference_calls)) == (once, once), (calls, reference_calls)
