"""GRPOModule on the tiny offline models: one step end to end, logging, the reference model, invariances."""

from __future__ import annotations

import pytest
import torch

from grpo_lightning.data import ViVQAXDataModule
from grpo_lightning.errors import ConfigError
from scripts.tb_scalars import read_scalars
from tests.helpers import FAMILIES, fit, flat_params, make_module
from tests.tolerances import F32_RTOL

REQUIRED_TAGS = {
    "train/loss",
    "train/reward",
    "train/reward_std",
    "train/rewards/tag_count",
    "train/rewards_std/tag_count",
    "train/rewards/format",
    "train/kl",
    "train/clip_ratio/low",
    "train/clip_ratio/high",
    "train/completion_length/mean",
    "train/completion_length/max",
    "train/truncated_fraction",
    "train/frac_reward_zero_std",
    "train/entropy",
    "train/learning_rate",
    "train/step_time",
}


@pytest.mark.parametrize("family", FAMILIES)
def test_training_steps_update_weights_and_log_every_metric(assets, data_kwargs, tmp_path, family):
    module = make_module(assets, family)
    module.configure_model()
    before = flat_params(module)
    trainer = fit(module, data_kwargs, tmp_path, steps=2)
    assert trainer.global_step == 2
    assert not torch.equal(before, flat_params(module)), "the optimizer step changed no weight"
    scalars = read_scalars(trainer.logger.log_dir)
    missing = REQUIRED_TAGS - scalars.keys()
    assert not missing, f"not logged: {sorted(missing)}"
    assert [step for step, _ in scalars["train/reward"]] == [0, 1]
    for tag in REQUIRED_TAGS:
        assert all(torch.isfinite(torch.tensor(v)) for _, v in scalars[tag]), tag
    assert scalars["train/learning_rate"][0][1] == pytest.approx(1e-3)
    # 2 prompts x G=4 completions of at most 12 tokens
    assert 1 <= scalars["train/completion_length/max"][0][1] <= 12


def test_sampled_completions_are_logged_as_text(assets, data_kwargs, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    module = make_module(assets, logging=dict(num_completions=3, completions_every_n_steps=2))
    trainer = fit(module, data_kwargs, tmp_path, steps=3)
    events = EventAccumulator(trainer.logger.log_dir, size_guidance={"tensors": 0})
    events.Reload()
    tags = [t for t in events.Tags()["tensors"] if t.startswith("train/completions")]
    assert len(tags) == 1, events.Tags()["tensors"]
    tag = tags[0]
    text = events.Tensors(tag)[0].tensor_proto.string_val[0].decode()
    assert text.startswith("| prompt | completion | reward | tag_count | format |")
    assert text.count("\n| ") == 3  # three completion rows under the header
    # every 2nd step, at the step of the same step's scalars (and rollout file): the optimizer steps before it
    assert [step for step, _ in read_scalars(trainer.logger.log_dir)["train/reward"]] == [0, 1, 2]
    assert [event.step for event in events.Tensors(tag)] == [0, 2]


def test_no_reference_model_when_beta_is_zero(assets):
    module = make_module(assets, loss=dict(beta=0.0))
    module.configure_model()
    assert module.reference.model is None


def test_reference_model_is_frozen_and_never_checkpointed_or_optimised(assets):
    module = make_module(assets, loss=dict(beta=0.04))
    module.configure_model()
    reference = module.reference.model
    assert reference is not None and reference is not module.model
    assert not any(p.requires_grad for p in reference.parameters())
    reference_ids = {id(p) for p in reference.parameters()}
    assert not reference_ids & {id(p) for p in module.parameters()}
    assert all(key.startswith("model.") for key in module.state_dict())
    assert len(module.state_dict()) == len(module.model.state_dict())


def test_gradient_does_not_depend_on_the_micro_batch_size(assets, data_kwargs, tmp_path):
    """Same seed, same rollout; SGD with lr 1 and no clipping makes the weight change equal minus the gradient."""
    deltas = []
    for micro_batch_size in (3, 8):
        module = make_module(
            assets,
            optimizer=lambda params: torch.optim.SGD(params, lr=1.0),
            loss=dict(micro_batch_size=micro_batch_size, max_grad_norm=None),
        )
        module.configure_model()
        before = flat_params(module)
        fit(module, data_kwargs, tmp_path / str(micro_batch_size), steps=1, seed=123)
        deltas.append(flat_params(module) - before)
    assert deltas[0].abs().max() > 0
    torch.testing.assert_close(deltas[0], deltas[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_completion_logps_equal_an_unpadded_forward_pass(assets, data_kwargs, family):
    """Left padding, trimmed padding and logits_to_keep must not change a single log-prob."""
    module = make_module(assets, family)
    module.configure_model()
    module.model.eval()
    batch = first_prompts(data_kwargs)
    torch.manual_seed(0)
    rollout = module.rollouts.generate(batch, num_generations=2, do_sample=True)
    if family == "internvl":  # dynamic tiling: 2x2 grids and a 1x2 one, each with its thumbnail
        assert [visual["pixel_values"].shape[0] for visual in rollout.prompts.visual] == [5, 5, 3]
    logps = module.update.completion_logps(module.model, rollout)
    adapter = module.adapter
    suppressed = adapter.suppressed_token_ids(module.model)
    for j in range(len(rollout.completions)):
        p = int(rollout.prompt_index[j])
        length = int(rollout.completion_mask[j].sum())
        inputs = rollout.prompts.token_inputs([p], torch.ones(1, length, dtype=torch.long))  # one prompt: no padding
        prompt_length = inputs["input_ids"].shape[1]
        assert inputs["attention_mask"].all()
        ids = torch.cat([inputs.pop("input_ids"), rollout.completion_ids[j : j + 1, :length]], dim=1)
        with torch.no_grad():
            logits = module.model(input_ids=ids, **inputs, **rollout.prompts.visual_for([p])).logits[0].double()
        logits[:, suppressed] = -torch.inf
        expected = logits[prompt_length - 1 : -1].log_softmax(-1).gather(-1, ids[0, prompt_length:, None])[:, 0]
        torch.testing.assert_close(logps[j, :length].double(), expected, rtol=1e-4, atol=1e-4)
        assert torch.all(logps[j, length:] == 0)


def test_rollout_masks_everything_after_the_first_eos(assets, data_kwargs):
    module = make_module(assets)
    module.configure_model()
    data = ViVQAXDataModule(**data_kwargs, batch_size=2, shuffle=False)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    torch.manual_seed(0)
    rollout = module.rollouts.generate(batch, num_generations=4, do_sample=True)
    eos = set(module.adapter.eos_token_ids(module.model))
    suppressed = set(module.adapter.suppressed_token_ids(module.model))
    for ids, mask in zip(rollout.completion_ids.tolist(), rollout.completion_mask.tolist(), strict=True):
        kept = [t for t, m in zip(ids, mask, strict=True) if m]
        assert not any(t in eos for t in kept[:-1]), "a kept token follows an EOS"
        assert not any(t in suppressed for t in kept), "an image placeholder or special token was sampled"
        if any(t in eos for t in ids):
            assert kept[-1] in eos and sum(mask) == ids.index(next(t for t in ids if t in eos)) + 1


@pytest.mark.parametrize(
    "text, pad_with",
    [
        ("<think>hai hình</think><answer>có</answer><explain>vì có hình đỏ</explain>", "pad"),
        ("<think>hai hình</think><answer>có</answer><explain>vì có hình đỏ</explain>", "zero"),  # id 0 is "!"
        ("<answer>không</answer>", "eos"),  # the engine may repeat the EOS past the end
        ("", "zero"),  # the EOS first: an empty completion
    ],
)
def test_completions_decode_to_their_tokens_up_to_the_eos_whatever_pads_them(assets, text, pad_with):
    from transformers import AutoTokenizer

    from grpo_demo import internvl_path
    from grpo_lightning.algorithms import completion_mask
    from grpo_lightning.rollout import decode_completions

    tokenizer = AutoTokenizer.from_pretrained(internvl_path(assets))
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = {"pad": tokenizer.pad_token_id, "zero": 0, "eos": eos}[pad_with]
    assert tokenizer.decode([0]) == "!"  # an ordinary token, as in Qwen2's vocabulary
    ids = tokenizer(text)["input_ids"] + [eos]
    # the second row ran to the generation budget without an EOS and sets the width
    full = tokenizer(text + " và thêm nhiều chữ nữa ở cuối câu này")["input_ids"]
    assert len(full) > len(ids)
    completion_ids = torch.tensor([ids + [pad] * (len(full) - len(ids)), full])
    mask = completion_mask(completion_ids, [eos])
    texts = decode_completions(tokenizer, completion_ids, mask)
    assert texts[0] == text
    assert texts[1] == text + " và thêm nhiều chữ nữa ở cuối câu này"


def test_invalid_settings_are_refused_with_a_clear_message(assets):
    with pytest.raises(ValueError, match="num_generations must be at least 2"):
        make_module(assets, sampling=dict(num_generations=1))
    with pytest.raises(ValueError, match="rewards.weights has 1 entries for 2 rewards.funcs"):
        make_module(assets, rewards=dict(weights=[1.0]))
    with pytest.raises(ValueError, match="Unknown reward 'nope'"):
        make_module(assets, rewards=dict(funcs=["nope"]))


def first_prompts(data_kwargs, size: int = 3) -> dict:
    """The first training batch: pictures of two sizes and aspect ratios, so 5, 5 and 3 InternVL tiles."""
    data = ViVQAXDataModule(**data_kwargs, batch_size=size, shuffle=False)
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def image_layout(prompts) -> list:
    """Per prompt: InternVL's tile count, or Qwen2-VL's image grid (t, h, w) in patches."""
    return [
        visual["image_grid_thw"][0].tolist() if "image_grid_thw" in visual else visual["pixel_values"].shape[0]
        for visual in prompts.visual
    ]


@pytest.mark.parametrize(
    "family, options, checkpoint_layout, layout, saved",
    [
        ("internvl", {"max_patches": 2}, [5, 5, 3], [1, 1, 3], {"crop_to_patches": True, "max_patches": 2}),
        ("internvl", {"crop_to_patches": False}, [5, 5, 3], [1, 1, 1], {"crop_to_patches": False, "max_patches": 1}),
        (
            "qwen2_vl",
            {"min_pixels": 256, "max_pixels": 1024},
            [[1, 6, 8], [1, 6, 8], [1, 8, 6]],
            [[1, 2, 4], [1, 2, 4], [1, 4, 2]],
            {"size": {"shortest_edge": 256, "longest_edge": 1024}},
        ),
    ],
)
def test_image_resolution_options_reach_the_prompts_and_the_exported_processor(
    assets, data_kwargs, tmp_path, family, options, checkpoint_layout, layout, saved
):
    """The options resize the images of training prompts, and the exported processor, loaded back, resizes them the
    same way: same prompt tokens, same pixels."""
    import json

    from transformers import AutoProcessor

    from grpo_lightning.adapters import build_adapter
    from grpo_lightning.export import export_model

    batch = first_prompts(data_kwargs)
    module = make_module(assets, family, image=options)
    module.configure_model()
    prompts = module.adapter.prepare_prompts(batch["image"], batch["prompt"])
    plain = build_adapter(family, AutoProcessor.from_pretrained(module.model_name_or_path))
    assert image_layout(plain.prepare_prompts(batch["image"], batch["prompt"])) == checkpoint_layout
    assert image_layout(prompts) == layout

    out = export_model(module.model, module.adapter.processor, tmp_path / "export")
    written = json.loads((out / "processor_config.json").read_text(encoding="utf-8"))["image_processor"]
    assert {key: written[key] for key in saved} == saved
    reloaded = build_adapter(family, AutoProcessor.from_pretrained(out)).prepare_prompts(
        batch["image"], batch["prompt"]
    )
    assert torch.equal(reloaded.input_ids, prompts.input_ids)
    for again, trained in zip(reloaded.visual, prompts.visual, strict=True):
        assert again.keys() == trained.keys()
        assert all(torch.equal(again[key], trained[key]) for key in trained)


@pytest.mark.parametrize(
    "family, options, message",
    [
        (
            "internvl",
            {"max_pixels": 1024},
            r"max_pixels does not apply to this checkpoint \(model_type internvl\).*"
            r"options of this model family: crop_to_patches, min_patches, max_patches",
        ),
        (
            "qwen2_vl",
            {"crop_to_patches": True, "max_patches": 6},
            r"crop_to_patches, max_patches do not apply to this checkpoint \(model_type qwen2_vl / qwen2_5_vl\)"
            r".*options of this model family: min_pixels, max_pixels",
        ),
        ("internvl", {"min_patches": 3, "max_patches": 2}, r"min_patches \(3\) is above max_patches \(2\)"),
        ("internvl", {"min_patches": 6}, r"min_patches \(6\) is above max_patches \(4, the checkpoint's value\)"),
        ("internvl", {"crop_to_patches": False, "max_patches": 2}, r"crop_to_patches is false .*remove them"),
        ("qwen2_vl", {"min_pixels": 8192}, r"min_pixels \(8192\) is above max_pixels \(4096, the checkpoint's"),
        (
            "qwen2_vl",
            {"min_pixels": 64, "max_pixels": 100},
            r"max_pixels \(100\) is below one image token of this model \(16x16",
        ),
    ],
)
def test_image_resolution_options_the_model_cannot_use_are_refused_before_it_loads(assets, family, options, message):
    module = make_module(assets, family, image=options)
    with pytest.raises(ConfigError, match=message):
        module.configure_model()
    assert module.model is None and module.adapter is None


def test_image_resolution_counts_below_one_are_refused(assets):
    with pytest.raises(ConfigError, match="image.max_patches must be at least 1, not 0"):
        make_module(assets, image=dict(max_patches=0))
    with pytest.raises(ConfigError, match="image.min_pixels must be at least 1, not -5"):
        make_module(assets, "qwen2_vl", image=dict(min_pixels=-5))


def test_gradient_checkpointing_trains_and_sampling_keeps_the_kv_cache(assets, data_kwargs, tmp_path, monkeypatch):
    module = make_module(assets, gradient_checkpointing=True)
    module.configure_model()
    assert module.model.is_activation_checkpointing
    seen = []
    original = module.model.generate

    def spy(*args, **kwargs):
        seen.append((module.model.training, kwargs.get("use_cache")))
        return original(*args, **kwargs)

    monkeypatch.setattr(module.model, "generate", spy)
    before = flat_params(module)
    fit(module, data_kwargs, tmp_path, steps=1)
    assert seen == [(False, True)], "sampling must run in eval mode with use_cache=True"
    assert module.model.training
    assert not torch.equal(before, flat_params(module))


def test_several_iterations_per_rollout_step_the_optimizer_each_time(assets, data_kwargs, tmp_path):
    module = make_module(assets, loss=dict(num_iterations=2, beta=0.0))
    trainer = fit(module, data_kwargs, tmp_path, steps=4)
    # 2 rollouts x 2 optimizer steps; the second iteration's ratio differs from 1, so clipping can happen.
    assert trainer.global_step == 4
    assert len(read_scalars(trainer.logger.log_dir)["train/reward"]) == 2


class _TwoProcesses:
    """Stands in for a 2-process trainer: ``all_gather`` stacks what both processes send, rank-major (each
    process's rewards padded with NaN as the module pads them, or their counts)."""

    def __init__(self, rank: int, rewards_per_rank: list[torch.Tensor]):
        self.world_size, self.global_rank = 2, rank
        self.strategy = self
        self.rewards_per_rank = rewards_per_rank

    def all_gather(self, tensor, group=None, sync_grads=False):
        if tensor.ndim == 0:  # the counts
            assert tensor.item() == len(self.rewards_per_rank[self.global_rank])
            return torch.tensor([len(r) for r in self.rewards_per_rank])
        sent = [torch.cat([r, torch.full((len(tensor) - len(r),), torch.nan)]) for r in self.rewards_per_rank]
        torch.testing.assert_close(tensor, sent[self.global_rank], equal_nan=True)  # it sends its own rewards
        return torch.stack(sent)


ESTIMATOR_SCALINGS = [
    ("grpo", "batch"),
    ("grpo", "group"),
    ("grpo", "none"),
    ("rloo", "none"),
    ("rloo", "batch"),
    ("reinforce_pp", "batch"),
    ("reinforce_pp_baseline", "batch"),
    ("grpo_passk", "group"),
    ("grpo_passk", "none"),
]


@pytest.mark.parametrize(("estimator", "scale_rewards"), ESTIMATOR_SCALINGS)
@pytest.mark.parametrize("groups", [(2, 2), (2, 1)])
def test_advantages_under_data_parallelism_equal_one_process_over_the_global_batch(
    assets, estimator, scale_rewards, groups
):
    """Two processes with whole groups (the same number, or one short last batch): every estimator and mode gives
    each process the rows one process would give it for the whole batch; for ``batch`` that needs the gathered
    rewards (each process's own std differs)."""
    from grpo_lightning.advantages import compute_advantages

    local = [
        torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]),  # rank 0: rewards of 0/1
        torch.tensor([0.0, 10.0, 5.0, 5.0, 2.0, 3.0, 9.0, 1.0]),  # rank 1: a much wider spread
    ]
    local = [rewards[: 4 * n] for rewards, n in zip(local, groups, strict=True)]
    whole = compute_advantages(torch.cat(local), 4, estimator, scale_rewards)
    loss = dict(scale_rewards=scale_rewards, advantage_estimator=estimator)
    for rank in (0, 1):
        module = make_module(assets, sampling=dict(num_generations=4), loss=loss)
        module._trainer = _TwoProcesses(rank, local)
        got = module.update.advantages(local[rank])
        start = len(local[0]) if rank else 0
        torch.testing.assert_close(got, whole[start : start + len(local[rank])], rtol=F32_RTOL, atol=1e-6)
        own = compute_advantages(local[rank], 4, estimator, scale_rewards)
        if scale_rewards == "batch":  # negative control: this process's own batch std is not the global one
            assert not torch.allclose(own, got)
        else:
            torch.testing.assert_close(own, got, rtol=0, atol=0)


def test_the_adapter_registry_leaves_the_checkpoint_converter_unimported():
    """Choosing an adapter must not pay for the remote-code InternVL converter, which only a remote-code checkpoint
    needs (its error message names the converter's command)."""
    import subprocess
    import sys

    code = "import grpo_lightning.adapters, sys; print('grpo_lightning.convert_internvl' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
