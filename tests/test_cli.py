"""The command line: subcommands, every config in configs/ parses, and the demo config trains and learns."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from grpo_lightning import demo_assets
from grpo_lightning.cli import main
from scripts.tb_scalars import read_scalars

ROOT = Path(__file__).resolve().parents[1]


def printed_config(out: str) -> dict:
    """The YAML that --print_config wrote (DeepSpeed may log a line of its own on import)."""
    return yaml.safe_load("\n".join(line for line in out.splitlines() if not line.startswith("[")))


CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_help_lists_the_subcommands():
    result = subprocess.run(
        [sys.executable, "-m", "grpo_lightning", "--help"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    for subcommand in ("fit", "validate", "test", "predict"):
        assert f"    {subcommand} " in result.stdout


def test_fit_help_documents_the_module_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--model.num_generations", "--model.beta", "--model.loss_type", "--data.batch_size"):
        assert option in out
    assert "G, completions sampled per prompt" in out


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_config_parses(config, capsys):
    """`fit --print_config` parses and validates the whole config (classes, types, choices) without running."""
    configs = [str(config)]
    if config.name != "demo.yaml" and "demo" in config.name:  # overlays on top of the demo config
        configs = [str(ROOT / "configs" / "demo.yaml"), str(config)]
    args = ["fit"] + [arg for c in configs for arg in ("--config", c)] + ["--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0
    printed = printed_config(capsys.readouterr().out)
    assert printed["model"]["model_name_or_path"]
    assert printed["data"]["train_file"]


def test_the_real_recipe_is_what_the_issue_asks(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / "configs" / "internvl.yaml"), "--print_config"])
    config = printed_config(capsys.readouterr().out)
    assert config["model"]["model_name_or_path"] == "OpenGVLab/InternVL3-1B-hf"
    assert config["model"]["num_generations"] == 8
    assert config["model"]["beta"] == 0.04
    assert config["trainer"]["precision"] == "bf16-mixed"
    strategy = config["trainer"]["strategy"]
    assert strategy["class_path"] == "lightning.pytorch.strategies.DeepSpeedStrategy"
    assert strategy["init_args"]["stage"] == 2 and strategy["init_args"]["offload_optimizer"] is True


@pytest.mark.slow
def test_demo_config_trains_and_its_reward_rises(assets, data_kwargs, tmp_path):
    """`configs/demo.yaml` as `make demo` runs it (asset paths pointed at the fixture), shortened to 40 steps."""
    overrides = {
        "--model.model_name_or_path": str(demo_assets.internvl_path(assets)),
        "--trainer.logger.init_args.save_dir": str(tmp_path),
        "--trainer.max_steps": "40",
        "--trainer.val_check_interval": "20",
        "--trainer.enable_progress_bar": "false",
        **{f"--data.{key}": value for key, value in data_kwargs.items()},
    }
    args = ["fit", "--config", str(ROOT / "configs" / "demo.yaml")]
    for key, value in overrides.items():
        args += [key, value]
    main(args)
    scalars = read_scalars(tmp_path)
    rewards = [value for _, value in scalars["train/reward"]]
    assert len(rewards) == 40
    first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    # Measured: first 10 steps ~0.04, last 10 steps ~0.3 (tag_count reward, 4 prompts x G=8).
    assert last > first + 0.1, (first, last)
    assert [step for step, _ in scalars["val/accuracy"]] == [19, 39]  # validation ran after steps 20 and 40
    assert (tmp_path / "demo" / "version_0" / "checkpoints" / "last.ckpt").exists()
    assert (tmp_path / "demo" / "version_0" / "hf_export" / "model.safetensors").exists()


def test_the_recipe_builds_deepspeed_zero2_with_cpu_offload_and_clipping(capsys):
    """On the CPU: the strategy object the recipe describes, and what the module adds to its config."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DeepSpeedStrategy

    from grpo_lightning.module import GRPOModule

    with pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / "configs" / "internvl.yaml"), "--print_config"])
    config = printed_config(capsys.readouterr().out)
    strategy = DeepSpeedStrategy(**config["trainer"]["strategy"]["init_args"])
    zero = strategy.config["zero_optimization"]
    assert zero["stage"] == 2
    assert zero["offload_optimizer"]["device"] == "cpu"
    assert "offload_param" not in zero or zero["offload_param"] is None
    assert config["model"]["optimizer"]["class_path"] == "deepspeed.ops.adam.DeepSpeedCPUAdam"
    # Lightning forbids gradient clipping with manual optimization; the module hands max_grad_norm to DeepSpeed.
    module = GRPOModule(model_name_or_path="unused", max_grad_norm=config["model"]["max_grad_norm"])
    module.trainer = SimpleNamespace(strategy=strategy)
    module.setup("fit")
    assert strategy.config["gradient_clipping"] == 1.0


def test_the_full_reward_suite_and_a_plugin_from_yaml_in_a_demo_fit(assets, data_kwargs, tmp_path):
    """`configs/demo_rewards.yaml`: accuracy, format, explanation (CIDEr-D + tiny CLIP) and a dotted-path plugin."""
    import json

    reward_kwargs = {
        "explanation": {
            "cider_weight": 0.5,
            "clip_weight": 0.5,
            "corpus_file": data_kwargs["train_file"],
            "clip_model": str(demo_assets.clip_config_path(assets)),
            "clip_pretrained": "random",
            "cache_dir": str(tmp_path / "cache"),
        },
        "tests.reward_plugin:brevity": {"max_words": 20},
    }
    args = [
        "fit",
        "--config",
        str(ROOT / "configs" / "demo.yaml"),
        "--config",
        str(ROOT / "configs" / "demo_rewards.yaml"),
    ]
    args += ["--model.model_name_or_path", str(demo_assets.internvl_path(assets))]
    args += ["--model.reward_kwargs", json.dumps(reward_kwargs), "--trainer.max_steps", "3"]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]
    args += ["--trainer.limit_val_batches", "0"]
    for key, value in data_kwargs.items():
        args += [f"--data.{key}", value]
    main(args)
    scalars = read_scalars(tmp_path)
    for name in ("accuracy", "format", "explanation", "tag_count", "brevity"):
        points = scalars[f"train/rewards/{name}"]
        assert len(points) == 3 and all(0.0 <= value <= 3.0 for _, value in points), name
    # explanation scores are in [0, 1] (a random model rarely writes an <explain>: those completions score 0)
    assert all(0.0 <= value <= 1.0 for _, value in scalars["train/rewards/explanation"])


def test_ckpt_path_last_with_nothing_to_resume_is_an_error_not_a_fresh_run(assets, data_kwargs, tmp_path):
    args = ["fit", "--config", str(ROOT / "configs" / "demo.yaml"), "--ckpt_path", "last"]
    args += ["--model.model_name_or_path", str(demo_assets.internvl_path(assets))]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path)]
    for key, value in data_kwargs.items():
        args += [f"--data.{key}", value]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert str(exit_info.value).startswith("--ckpt_path last: this run name has no last.ckpt yet")
    assert not list(tmp_path.rglob("*.ckpt"))


def test_a_run_name_that_escapes_the_log_folder_is_refused(assets, data_kwargs, tmp_path):
    args = ["fit", "--config", str(ROOT / "configs" / "demo.yaml"), "--trainer.logger.init_args.name", "../outside"]
    args += ["--model.model_name_or_path", str(demo_assets.internvl_path(assets))]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path / "logs")]
    for key, value in data_kwargs.items():
        args += [f"--data.{key}", value]
    with pytest.raises(ValueError, match="outside"):
        main(args)
