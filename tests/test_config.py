"""The module's option groups: given as dataclasses or mappings, saved as plain dicts, loaded back without the
command line, and the flat option names of older checkpoints read into their groups."""

from __future__ import annotations

import pytest
import torch

from grpo_demo import internvl_path
from grpo_lightning.config import FLAT_OPTION_NAMES, GROUPS, LoRAConfig, LossConfig, SamplingConfig, regrouped
from grpo_lightning.module import GRPOModule


def test_a_module_built_in_python_loads_back_from_its_checkpoint(assets, tmp_path):
    module = GRPOModule(
        str(internvl_path(assets)),
        lora=LoRAConfig(r=4, alpha=8.0),
        sampling={"num_generations": 4, "temperature": 0.7},
        loss=LossConfig(beta=0.0),
    )
    assert module.sampling == SamplingConfig(num_generations=4, temperature=0.7)
    path = tmp_path / "module.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": dict(module.hparams), "pytorch-lightning_version": "2.6.0"}, path)
    assert torch.load(path, weights_only=True)["hyper_parameters"]["lora"] == {
        "r": 4,
        "alpha": 8.0,
        "dropout": 0.05,
        "target_modules": None,
    }
    loaded = GRPOModule.load_from_checkpoint(path, strict=False)
    assert (loaded.lora, loaded.sampling, loaded.loss) == (module.lora, module.sampling, module.loss)


@pytest.mark.parametrize(("flat", "group", "field"), [(k, g, f) for k, (g, f) in FLAT_OPTION_NAMES.items()])
def test_every_flat_name_of_older_checkpoints_names_a_field_of_its_group(flat, group, field):
    assert field in GROUPS[group].__dataclass_fields__


def test_older_checkpoints_flat_options_are_read_into_their_groups():
    saved = {"model_name_or_path": "m", "lora_r": 8, "beta": 0.0, "max_patches": 6, "sampling": {"top_k": 5}}
    assert regrouped(saved) == {
        "model_name_or_path": "m",
        "lora": {"r": 8},
        "loss": {"beta": 0.0},
        "image": {"max_patches": 6},
        "sampling": {"top_k": 5},
    }
    module = GRPOModule(**regrouped(saved))
    assert (module.lora.r, module.loss.beta, module.image.max_patches, module.sampling.top_k) == (8, 0.0, 6, 5)
