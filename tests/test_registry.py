"""One registry type for every named variant, and the config's choices taken from the registries."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest

from grpo_lightning.algorithms import ADVANTAGE_SCALERS, IMPORTANCE_SAMPLING_LEVELS, KL_ESTIMATORS, LOSS_AGGREGATORS
from grpo_lightning.config import EvalConfig, LossConfig, RewardConfig, VLLMConfig
from grpo_lightning.engines import ENGINES, HFEngine, VLLMEngine, build_engine
from grpo_lightning.errors import ConfigError
from grpo_lightning.metrics import PROTOCOLS
from grpo_lightning.registry import Registry
from grpo_lightning.rewards import AGGREGATIONS, REWARDS
from tests.helpers import ROOT, fit_args


def test_a_registry_keeps_its_entries_in_the_order_registered():
    colours: Registry[int] = Registry("colour")

    @colours.register("red")
    def red() -> int:
        return 1

    assert colours.register("blue", 2) == 2
    assert colours.names() == ("red", "blue") and list(colours) == ["red", "blue"] and len(colours) == 2
    assert colours["red"] is red and colours["blue"] == 2
    assert "red" in colours and "green" not in colours
    assert colours.check("blue") == "blue"


def test_a_registry_refuses_a_second_entry_under_one_name():
    colours: Registry[int] = Registry("colour")
    colours.register("red", 1)
    with pytest.raises(ValueError, match=r"^colour 'red' is already registered \(1\)\.$"):
        colours.register("red", 2)
    assert colours["red"] == 1


def test_an_unknown_name_is_a_config_error_that_lists_the_registered_ones():
    colours: Registry[int] = Registry("colour")
    colours.register("red", 1)
    colours.register("blue", 2)
    with pytest.raises(ConfigError, match=r"^Unknown colour 'green'; known values are: red, blue\.$"):
        colours["green"]
    with pytest.raises(ConfigError, match=r"^Unknown model.colour 'green'; known values are: red, blue\.$"):
        colours.check("green", "model.colour")


#: Every option that picks a registered variant: its group, field, full name and registry.
REGISTRY_OPTIONS = [
    (LossConfig, "loss_type", "model.loss.loss_type", LOSS_AGGREGATORS),
    (LossConfig, "scale_rewards", "model.loss.scale_rewards", ADVANTAGE_SCALERS),
    (LossConfig, "importance_sampling_level", "model.loss.importance_sampling_level", IMPORTANCE_SAMPLING_LEVELS),
    (LossConfig, "kl_estimator", "model.loss.kl_estimator", KL_ESTIMATORS),
    (RewardConfig, "aggregation", "model.rewards.aggregation", AGGREGATIONS),
    (EvalConfig, "protocol", "model.evaluation.protocol", PROTOCOLS),
]


@pytest.mark.parametrize(("group", "field", "option", "registry"), REGISTRY_OPTIONS, ids=lambda v: str(v))
def test_a_registry_backed_option_is_a_str_checked_against_its_registry(group, field, option, registry):
    assert {f.name: f.type for f in dataclasses.fields(group)}[field] == "str"  # no closed Literal beside the registry
    for name in registry:
        assert getattr(group(**{field: name}), field) == name
    known = re.escape(", ".join(registry))  # k3+
    with pytest.raises(ConfigError, match=rf"^Unknown {option} 'nope'; known values are: {known}\.$"):
        group(**{field: "nope"})


def test_engines_are_built_from_their_registry():
    assert ENGINES.names() == ("hf", "vllm")
    assert ENGINES["hf"] is HFEngine and ENGINES["vllm"] is VLLMEngine
    assert isinstance(build_engine("hf", VLLMConfig()), HFEngine)
    with pytest.raises(ConfigError, match=r"^Unknown model.rollout_engine 'sglang'; known values are: hf, vllm\.$"):
        build_engine("sglang", VLLMConfig())


def test_the_built_in_rewards_are_registered_in_one_registry():
    assert isinstance(REWARDS, Registry)
    assert REWARDS.names()[:5] == ("accuracy", "format", "tag_count", "explanation", "overlong")


LAUNCHER = """
import sys
from pathlib import Path

from grpo_lightning.algorithms import LOSS_AGGREGATORS, LossAggregation
from grpo_lightning.cli import main

CALLS = Path(sys.argv.pop(1))


def token_sum(masked_loss, mask, num_sequences, num_tokens, max_completion_length):
    with CALLS.open("a") as calls:
        calls.write(f"{num_sequences}\\n")
    return masked_loss.sum() / num_sequences


LOSS_AGGREGATORS.register("token_sum", LossAggregation(token_sum, normaliser="sequences"))
main()
"""


def test_a_variant_registered_before_the_config_is_read_is_chosen_from_the_command_line(assets, tmp_path):
    """A launcher that registers a loss aggregation and runs the command line: the option takes its name with no
    other edit, and the fit's loss is that aggregation's; the same name without the registration is refused."""
    launcher, calls = tmp_path / "launcher.py", tmp_path / "calls.txt"
    launcher.write_text(LAUNCHER, encoding="utf-8")
    args = fit_args(assets, tmp_path, "--trainer.max_steps", "2", "--model.loss.loss_type", "token_sum")
    done = subprocess.run(
        [sys.executable, str(launcher), str(calls), *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert calls.read_text().split() == ["4", "4"]  # one micro-batch of B * G = 2 * 2 sequences, each of 2 steps
    refused = subprocess.run(
        [sys.executable, "-m", "grpo_lightning", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert refused.returncode == 2
    assert "Unknown model.loss.loss_type 'token_sum'; known values are: grpo, bnpo, dr_grpo, dapo." in refused.stderr
