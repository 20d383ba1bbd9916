"""Rewards' set-up step: :func:`prepare_rewards` runs it, and a fit runs that before its first training step, so that
a CLIP model that cannot load or a corpus file that cannot be read stops the run with one message before it trains."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import lightning as L
import pytest
import yaml

import grpo_demo
from grpo_lightning.data import ViVQAXDataModule
from grpo_lightning.errors import ConfigError
from grpo_lightning.rewards import RewardError, prepare_rewards
from tests.helpers import fit_args, make_module, quiet_trainer, recorded_training_steps, run_cli


class Prepared:
    """A reward with a set-up step that counts its calls, or raises ``error``."""

    def __init__(self, error: Exception | None = None):
        self.error = error
        self.setups = 0

    def setup(self) -> None:
        self.setups += 1
        if self.error is not None:
            raise self.error

    def __call__(self, completions, solution, **kwargs):
        return [1.0] * len(completions)


def plain(completions, solution, **kwargs):
    return [0.0] * len(completions)


def test_prepare_rewards_runs_each_set_up_step_and_leaves_plain_functions_alone():
    first, second = Prepared(), Prepared()
    funcs = [("plain", plain), ("bound", functools.partial(plain, scale=2)), ("first", first), ("second", second)]
    prepare_rewards(funcs)
    prepare_rewards(funcs)  # once per stage (fit, then validate): each set-up is called each time
    assert (first.setups, second.setups) == (2, 2)


def _fails_deep_inside() -> None:
    raise KeyError("weights")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            ConfigError("corpus.json: no such reference corpus; set the corpus_file option."),
            r"^Reward 'mine' cannot start: corpus.json: no such reference corpus; set the corpus_file option\.$",
        ),
        (None, r"^Reward 'mine' raised KeyError in its set-up, before training: 'weights'\. In the reward:\n"),
    ],
)
def test_a_set_up_that_fails_is_reported_with_the_reward_name(error, expected):
    reward = Prepared(error)
    if error is None:  # an error that is no user error: a bug in the reward, shown with its frames
        reward.setup = _fails_deep_inside
    with pytest.raises(RewardError, match=expected) as raised:
        prepare_rewards([("plain", plain), ("mine", reward)])
    if error is None:
        message = str(raised.value)
        assert "in _fails_deep_inside" in message and 'raise KeyError("weights")' in message
        assert "prepare_rewards" not in message


class StepCounter(L.Callback):
    def __init__(self):
        self.steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.steps += 1


def _explanation(assets: Path, tmp_path: Path, **options) -> dict:
    """The rewards group with the explanation reward on the demo's tiny CLIP and training split."""
    kwargs = {"clip_model": str(grpo_demo.clip_config_path(assets)), "clip_pretrained": "random", "device": "cpu"}
    kwargs |= {"corpus_file": str(grpo_demo.split_json_path(assets, "train")), "cache_dir": str(tmp_path / "cider")}
    return {"funcs": ["format", "explanation"], "kwargs": {"explanation": {**kwargs, **options}}}


def _missing_checkpoint(tmp_path: Path) -> dict:
    return {"cider_weight": 0.0, "clip_pretrained": str(tmp_path / "no.pt")}


def _bad_corpus(tmp_path: Path) -> dict:
    path = tmp_path / "bad-train.json"
    path.write_text(json.dumps([{"question": "?", "question_id": "77"}]), encoding="utf-8")
    return {"clip_weight": 0.0, "corpus_file": str(path)}


def _vanishing_corpus(tmp_path: Path) -> dict:
    path = tmp_path / "gone.json"
    path.write_text("[]", encoding="utf-8")  # there when the module is built, deleted before the fit
    return {"clip_weight": 0.0, "corpus_file": str(path)}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            _missing_checkpoint,
            r"^Reward 'explanation' cannot start: explanation reward: cannot load the CLIP model '.*tiny-clip\.json' "
            r"with weights '.*no\.pt': the file does not exist",
        ),
        (
            _bad_corpus,
            r"^Reward 'explanation' cannot start: 1 problem in the data:\n.*bad-train\.json:1: sample 77: missing "
            r"field",
        ),
        (
            _vanishing_corpus,
            r"^Reward 'explanation' cannot start: .*gone\.json: no such reference corpus; set "
            r"model\.rewards\.kwargs\.explanation\.corpus_file",
        ),
    ],
    ids=["clip-checkpoint-missing", "corpus-bad-records", "corpus-missing"],
)
def test_a_reward_whose_set_up_fails_stops_the_fit_before_any_step(assets, data_kwargs, tmp_path, options, message):
    options = options(tmp_path)
    module = make_module(assets, rewards=_explanation(assets, tmp_path, **options))
    if options.get("corpus_file", "").endswith("gone.json"):
        Path(options["corpus_file"]).unlink()
    counter = StepCounter()
    trainer = quiet_trainer(
        max_steps=3,
        callbacks=[counter],
        default_root_dir=tmp_path / "run",
        enable_checkpointing=True,  # as in a run: a step that ran would leave a checkpoint under tmp_path / "run"
    )
    with pytest.raises(RewardError, match=message):
        trainer.fit(module, datamodule=ViVQAXDataModule(**data_kwargs, batch_size=2, shuffle=False))
    assert counter.steps == 0 and trainer.global_step == 0
    assert module.model is None  # it stopped before the policy's weights were even loaded
    assert not list((tmp_path / "run").rglob("*.ckpt"))


def test_the_command_line_shows_a_clip_model_that_cannot_load_as_one_error_before_training(
    assets, tmp_path, capsys, monkeypatch
):
    steps = recorded_training_steps(monkeypatch)
    overlay = tmp_path / "rewards.yaml"
    rewards = {
        "funcs": ["format", "explanation"],
        "weights": [1.0, 1.0],
        "kwargs": {
            "explanation": {
                "cider_weight": 0.0,
                "clip_model": str(grpo_demo.clip_config_path(assets)),
                "clip_pretrained": str(tmp_path / "clip.pt"),
            }
        },
    }
    overlay.write_text(yaml.safe_dump({"model": {"rewards": rewards}}), encoding="utf-8")
    err = run_cli([*fit_args(assets, tmp_path), "--config", str(overlay)], capsys)
    assert err.startswith(
        "error: Reward 'explanation' cannot start: explanation reward: cannot load the CLIP model "
        f"'{grpo_demo.clip_config_path(assets)}' with weights '{tmp_path / 'clip.pt'}': the file does not exist"
    )
    assert err.count("error:") == 1 and "Traceback" not in err
    assert steps == []
