"""LoRA and frozen vision: which weights train, and the reference model without a second copy."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText

from grpo_lightning.data import ViVQAXDataModule
from tests.helpers import FAMILIES, fit, make_module


def snapshot(module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.model.named_parameters()}


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_trains_only_the_adapters_of_the_language_model(assets, data_kwargs, tmp_path, family):
    module = make_module(assets, family, loss=dict(beta=0.04), lora=dict(r=4, alpha=8, dropout=0.0))
    module.configure_model()
    trainable = {name for name, p in module.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert all(".language_model." in name for name in trainable), "the vision tower must get no adapter by default"
    assert {name.rsplit(".lora_", 1)[0].rsplit(".", 1)[1] for name in trainable} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert module.reference.model is None, "with LoRA the reference is the base model, not a second copy"
    before = snapshot(module)
    fit(module, data_kwargs, tmp_path, steps=3)
    after = snapshot(module)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    # lora_A starts random and lora_B at zero; after a few steps both have moved, and nothing else has.
    assert changed and changed <= trainable
    assert any("lora_B" in name for name in changed)


def test_lora_target_modules_choose_the_projections(assets):
    module = make_module(assets, lora=dict(r=2, target_modules=["q_proj", "v_proj"]))
    module.configure_model()
    targets = {
        n.rsplit(".lora_", 1)[0].rsplit(".", 1)[1] for n, p in module.model.named_parameters() if p.requires_grad
    }
    assert targets == {"q_proj", "v_proj"}


def test_the_reference_with_lora_is_the_base_model(assets, data_kwargs):
    """Reference log-probs under disabled adapters equal those of the untouched base checkpoint."""
    module = make_module(assets, lora=dict(r=4, dropout=0.0))
    module.configure_model()
    with torch.no_grad():  # move the adapters away from the identity, so disabling them matters
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    data = ViVQAXDataModule(**data_kwargs, batch_size=2, shuffle=False)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    torch.manual_seed(0)
    rollout = module.rollouts.generate(batch, num_generations=2, do_sample=True)
    reference = module.reference_logps(rollout)
    policy = module.update.completion_logps(module.model, rollout)
    base = AutoModelForImageTextToText.from_pretrained(module.model_name_or_path)
    expected = module.update.completion_logps(base, rollout)
    torch.testing.assert_close(reference, expected, rtol=1e-5, atol=1e-5)
    assert (policy - expected).abs().max() > 1e-3, "the adapters changed nothing: the check above proves nothing"


def test_freeze_vision_modules_keeps_the_vision_tower_fixed(assets, data_kwargs, tmp_path):
    module = make_module(assets, freeze_vision_modules=True, loss=dict(beta=0.0))
    module.configure_model()
    before = snapshot(module)
    fit(module, data_kwargs, tmp_path, steps=2)
    after = snapshot(module)
    vision = [n for n in before if n.startswith("model.vision_tower.")]
    assert vision and all(torch.equal(before[n], after[n]) for n in vision)
    assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith("model.language_model."))
    assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith("model.multi_modal_projector."))
