"""Bad input through the command line: one message naming the file, sample, reward or model, and exit status 2."""

from __future__ import annotations

import json

import pytest

import grpo_demo
from grpo_lightning.adapters import check_checkpoint_layout
from grpo_lightning.errors import ConfigError
from grpo_lightning.module import GRPOModule
from tests.helpers import fit_args, recorded_training_steps, run_cli


def none_for_everything(completions, solution, **kwargs):
    """A reward plugin that has no opinion on anything."""
    return [None] * len(completions)


def bare_none(completions, solution, **kwargs):
    """A reward plugin that forgot to return its list."""
    return None


def test_an_empty_training_file_stops_fit_before_any_step(assets, tmp_path, capsys, monkeypatch):
    empty = tmp_path / "train.jsonl"
    empty.write_text("", encoding="utf-8")
    steps = recorded_training_steps(monkeypatch)
    err = run_cli(fit_args(assets, tmp_path, "--data.train_file", str(empty)), capsys)
    assert f"error: {empty}: the train split has no samples (the file holds no records); training on it" in err
    assert steps == [] and not (tmp_path / "logs" / "demo" / "version_0" / "hf_export").exists()


@pytest.mark.parametrize(
    ("reward", "message"),
    [
        (
            "tests.test_bad_input:none_for_everything",
            "error: No reward ('none_for_everything') scored any completion in the first 3 training steps: every "
            "reward returned None for every completion",
        ),
        ("tests.test_bad_input:bare_none", "error: Reward 'bare_none' returned None for sample ids "),
    ],
)
def test_a_reward_plugin_that_cannot_train_stops_fit_with_its_name(assets, tmp_path, capsys, reward, message):
    err = run_cli(
        fit_args(assets, tmp_path, "--model.rewards.funcs", f"[{reward}]", "--model.rewards.weights", "null"), capsys
    )
    assert message in err


def test_a_model_folder_that_does_not_exist_is_named(assets, tmp_path, capsys):
    missing = tmp_path / "models" / "tiny-internvl"
    err = run_cli(fit_args(assets, tmp_path, "--model.model_name_or_path", str(missing)), capsys)
    assert f"error: model.model_name_or_path {str(missing)!r}: no such model folder; check the path" in err


@pytest.mark.parametrize("name", ["./no/such/model", "../no-such-model", "/no/such/model", "a/b/c", "no such model"])
def test_a_path_that_does_not_exist_is_no_hub_id(name):
    with pytest.raises(ConfigError) as error:
        check_checkpoint_layout(name)
    assert str(error.value).startswith(f"model.model_name_or_path {name!r}: no such model folder; check the path")
    assert str(error.value).endswith("or give a hub id such as OpenGVLab/InternVL3-1B-hf.")


def test_a_leading_tilde_is_named_as_not_expanded():
    with pytest.raises(ConfigError, match=r"no such model folder \(a leading ~ is not expanded here"):
        check_checkpoint_layout("~/no-such-model-here")


def test_a_hub_id_that_is_not_cached_while_offline_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # no local folder of that name
    with pytest.raises(ConfigError) as error:
        check_checkpoint_layout("no-such-org/no-such-model")
    assert str(error.value).startswith(
        "model.model_name_or_path 'no-such-org/no-such-model': no such local folder, and the hub id is not in the "
        "Hugging Face cache, which is all there is with HF_HUB_OFFLINE=1; download it"
    )


def test_a_file_or_a_folder_without_config_is_no_model(assets, tmp_path):
    with pytest.raises(ConfigError, match=r"is a file, not a model folder"):
        check_checkpoint_layout(str(grpo_demo.internvl_path(assets) / "config.json"))
    with pytest.raises(ConfigError, match=r"the folder has no config.json"):
        check_checkpoint_layout(str(tmp_path))
    check_checkpoint_layout(str(grpo_demo.internvl_path(assets)))  # a real checkpoint passes


def test_configure_model_checks_the_path_before_transformers(tmp_path):
    module = GRPOModule(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"^model.model_name_or_path '.*nope': no such model folder"):
        module.configure_model()


def test_an_image_path_outside_the_image_folder_stops_fit(assets, tmp_path, capsys):
    records = json.loads(grpo_demo.split_json_path(assets, "train").read_text(encoding="utf-8"))[:4]
    records[1]["image_name"] = "../../../../../../etc/passwd"
    train = tmp_path / "train.json"
    train.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    err = run_cli(fit_args(assets, tmp_path, "--data.train_file", str(train)), capsys)
    assert f"{train}:" in err and "image path '../../../../../../etc/passwd' leads out of the image folder" in err
