"""The command line: subcommands, every config in configs/ parses, and the demo config trains and learns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import grpo_demo
from grpo_lightning.cli import main
from scripts.tb_scalars import read_scalars
from tests.helpers import ROOT


def printed_config(out: str) -> dict:
    """The YAML that --print_config wrote: all of stdout, nothing else printed there."""
    return yaml.safe_load(out)


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
    options = ("--model.sampling.num_generations", "--model.loss.beta", "--model.loss.loss_type", "--data.batch_size")
    for option in options:
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


def test_the_internvl_recipe_is_internvl3_1b_with_g_8_beta_0_04_bf16_and_zero2_offload(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / "configs" / "internvl.yaml"), "--print_config"])
    config = printed_config(capsys.readouterr().out)
    assert config["model"]["model_name_or_path"] == "OpenGVLab/InternVL3-1B-hf"
    assert config["model"]["sampling"]["num_generations"] == 8
    assert config["model"]["loss"]["beta"] == 0.04
    assert config["trainer"]["precision"] == "bf16-mixed"
    strategy = config["trainer"]["strategy"]
    assert strategy["class_path"] == "lightning.pytorch.strategies.DeepSpeedStrategy"
    assert strategy["init_args"]["stage"] == 2 and strategy["init_args"]["offload_optimizer"] is True


def demo_data(root: Path) -> dict[str, Path]:
    """The demo's own dataset (``make demo``'s) written under ``root``, as the data module's path options."""
    data = grpo_demo.data_dir(root)
    grpo_demo.write_dataset(data, seed=0, num_train=grpo_demo.DEMO_NUM_TRAIN, num_val=grpo_demo.DEMO_NUM_VAL)
    paths = {}
    for split in ("train", "val"):
        paths[f"{split}_file"] = grpo_demo.split_json_path(root, split)
        paths[f"{split}_image_dir"] = grpo_demo.image_dir(root, split)
    return paths


@pytest.mark.slow
def test_demo_config_trains_and_its_rewards_and_validation_rise_above_zero(assets, tmp_path):
    """`configs/demo.yaml` as `make demo` runs it, on the demo's dataset (64 training and 48 validation questions;
    the fixture's has 16 of the latter) with the fixture's cold-start model, shortened to 40 steps with validation
    every 10: the format reward and the whole reward rise in training, and validation scores the format, the answers
    and the explanations above 0."""
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    assert demo["trainer"]["max_steps"] // demo["trainer"]["val_check_interval"] >= 3  # a validation curve
    assert demo["model"]["model_name_or_path"].endswith(grpo_demo.INTERNVL_COLD_START_SUBDIR)
    overrides = {
        "--model.model_name_or_path": str(grpo_demo.internvl_cold_start_path(assets)),
        "--trainer.logger.init_args.save_dir": str(tmp_path),
        "--trainer.max_steps": "40",
        "--trainer.val_check_interval": "10",
        "--trainer.enable_progress_bar": "false",
        **{f"--data.{key}": str(path) for key, path in demo_data(tmp_path / "demo-data").items()},
    }
    args = ["fit", "--config", str(ROOT / "configs" / "demo.yaml")]
    for key, value in overrides.items():
        args += [key, value]
    main(args)
    scalars = read_scalars(tmp_path)

    def quarters(tag: str) -> tuple[float, float]:
        values = [value for _, value in scalars[tag]]
        assert len(values) == 40, tag
        return sum(values[:10]) / 10, sum(values[-10:]) / 10

    # Measured (2 cores): format 0.59 -> 0.86, reward 1.0 -> 1.4 (first vs last 10 steps).
    first, last = quarters("train/rewards/format")
    assert last > first + 0.1, (first, last)
    first, last = quarters("train/reward")
    assert last > first + 0.1, (first, last)
    validations = {tag: [value for _, value in scalars[tag]] for tag in scalars if tag.startswith("val/")}
    assert [step for step, _ in scalars["val/accuracy"]] == [9, 19, 29, 39]
    for tag in ("val/rewards/format", "val/accuracy", "val/unfiltered/CIDEr", "val/unfiltered/BLEU-1"):
        assert validations[tag][-1] > 0, (tag, validations[tag])
    assert (tmp_path / "demo" / "version_0" / "checkpoints" / "last.ckpt").exists()
    assert (tmp_path / "demo" / "version_0" / "hf_export" / "model.safetensors").exists()


def test_the_recipe_builds_deepspeed_zero2_with_cpu_offload_and_clipping(capsys):
    """On the CPU: the strategy object the recipe describes, and what the module adds to its config."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DeepSpeedStrategy

    from grpo_lightning.config import LossConfig
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
    module = GRPOModule(model_name_or_path="unused", loss=LossConfig(**config["model"]["loss"]))
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
            "clip_model": str(grpo_demo.clip_config_path(assets)),
            "clip_pretrained": "random",
            "cache_dir": str(tmp_path / "cache"),
        },
        "examples.reward_plugin:brevity": {"max_words": 20},
    }
    args = [
        "fit",
        "--config",
        str(ROOT / "configs" / "demo.yaml"),
        "--config",
        str(ROOT / "configs" / "demo_rewards.yaml"),
    ]
    args += ["--model.model_name_or_path", str(grpo_demo.internvl_path(assets))]
    args += ["--model.rewards.kwargs", json.dumps(reward_kwargs), "--trainer.max_steps", "3"]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]
    args += ["--trainer.limit_val_batches", "0"]
    for key, value in data_kwargs.items():
        args += [f"--data.{key}", value]
    cli = main(args)
    # linked from data.train_file, not repeated
    assert cli.model.rewards.kwargs["explanation"]["corpus_file"] == data_kwargs["train_file"]
    scalars = read_scalars(tmp_path)
    for name in ("accuracy", "format", "explanation", "tag_count", "brevity"):
        points = scalars[f"train/rewards/{name}"]
        assert len(points) == 3 and all(0.0 <= value <= 3.0 for _, value in points), name
    # explanation scores are in [0, 1] (a random model rarely writes an <explain>: those completions score 0)
    assert all(0.0 <= value <= 1.0 for _, value in scalars["train/rewards/explanation"])


def test_ckpt_path_last_with_nothing_to_resume_is_an_error_not_a_fresh_run(assets, data_kwargs, tmp_path, capsys):
    args = ["fit", "--config", str(ROOT / "configs" / "demo.yaml"), "--ckpt_path", "last"]
    args += ["--model.model_name_or_path", str(grpo_demo.internvl_path(assets))]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path)]
    for key, value in data_kwargs.items():
        args += [f"--data.{key}", value]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --ckpt_path last: this run name has no last.ckpt yet") and len(err.splitlines()) == 1
    assert not list(tmp_path.rglob("*.ckpt"))


def test_a_run_name_that_escapes_the_log_folder_is_refused(assets, data_kwargs, tmp_path, capsys):
    args = ["fit", "--config", str(ROOT / "configs" / "demo.yaml"), "--trainer.logger.init_args.name", "../outside"]
    args += ["--model.model_name_or_path", str(grpo_demo.internvl_path(assets))]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path / "logs")]
    for key, value in data_kwargs.items():
        args += [f"--data.{key}", value]
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: The run name '../outside' is not a relative folder path")
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "outside").exists()


# ------------------------------------------------------------------------------------------------ shipped configs
def run_cli(*args: str, cwd: Path, command: tuple[str, ...] = (sys.executable, "-m", "grpo_lightning")):
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_the_shipped_recipe_by_name_from_another_folder_trains_answer_format_and_explanation(tmp_path):
    """The design card's command, as a user of the installed package runs it: a config name, not a path."""
    result = run_cli("fit", "--config", "internvl.yaml", "--print_config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    shipped = Path(result.stderr.strip().splitlines()[-1].rpartition(": ")[2])
    assert result.stderr.startswith("--config internvl.yaml: no such file here; using the config shipped")
    assert shipped.resolve() == (ROOT / "configs" / "internvl.yaml").resolve()
    config = printed_config(result.stdout)
    model = config["model"]
    assert model["rewards"]["funcs"] == ["accuracy", "format", "explanation"]
    assert model["rewards"]["weights"] == [1.0, 1.0, 2.0]
    assert model["rewards"]["timeout_s"] == 120.0  # a hung reward stops the run instead of holding the GPU
    explanation = model["rewards"]["kwargs"]["explanation"]
    assert explanation["corpus_file"] == config["data"]["train_file"] == "data/ViVQA-X/ViVQA-X_train_grpo.jsonl"
    assert explanation["clip_model"] == "xlm-roberta-base-ViT-B-32"
    recipe = yaml.safe_load((ROOT / "configs" / "internvl.yaml").read_text())
    assert "corpus_file" not in recipe["model"]["rewards"]["kwargs"]["explanation"]  # one path in the recipe


def test_the_console_script_resolves_shipped_configs_the_same_way(tmp_path):
    script = Path(sys.executable).with_name("grpo-lightning")
    result = run_cli("fit", "--config", "demo.yaml", "--print_config", cwd=tmp_path, command=(str(script),))
    assert result.returncode == 0, result.stderr
    assert "using the config shipped with grpo_lightning" in result.stderr
    assert printed_config(result.stdout)["model"]["model_name_or_path"] == "assets/demo/models/tiny-internvl-cold-start"


def test_the_shipped_configs_are_package_data():
    from grpo_lightning.cli import shipped_config, shipped_configs_dir

    assert sorted(p.name for p in shipped_configs_dir().glob("*.yaml")) == [c.name for c in CONFIGS]
    assert shipped_config("internvl.yaml").read_bytes() == (ROOT / "configs" / "internvl.yaml").read_bytes()
    assert shipped_config("../configs/internvl.yaml") is None  # only bare names fall back to the shipped ones
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '[tool.setuptools.package-data]\ngrpo_lightning = ["configs/*.yaml"]' in pyproject


def test_inline_yaml_longer_than_a_file_name_goes_to_the_parser(capsys):
    """An inline ``--config`` of over 255 characters without a slash is no file name (ENAMETOOLONG), not an error."""
    from grpo_lightning.cli import main

    template = "{question} " + "Hãy trả lời bằng tiếng Việt. " * 12
    inline = "{model: {loss: {epsilon_low: 0.029}}, data: {prompt_template: '" + template + "'}}"
    assert len(inline.encode()) > 255 and "/" not in inline
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs" / "demo.yaml"), "--config", inline, "--print_config"])
    printed = capsys.readouterr()
    assert exit_info.value.code == 0, printed.err
    config = yaml.safe_load(printed.out)
    assert config["model"]["loss"]["epsilon_low"] == 0.029 and config["data"]["prompt_template"] == template


def test_an_unknown_config_name_lists_the_shipped_ones(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "internvl3.yaml"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --config internvl3.yaml: no such file (looked in ")
    assert ", ".join(config.name for config in CONFIGS) in err  # every shipped config, by name


# ------------------------------------------------------------------------------------------------ the corpus link
def test_the_reward_overlay_takes_its_corpus_from_data_train_file(capsys):
    demo, overlay = ROOT / "configs" / "demo.yaml", ROOT / "configs" / "demo_rewards.yaml"
    assert "corpus_file" not in yaml.safe_load(overlay.read_text())["model"]["rewards"]["kwargs"]["explanation"]
    args = ["fit", "--config", str(demo), "--config", str(overlay), "--data.train_file", "x/train.jsonl"]
    with pytest.raises(SystemExit):
        main([*args, "--print_config"])
    explanation = printed_config(capsys.readouterr().out)["model"]["rewards"]["kwargs"]["explanation"]
    assert explanation["corpus_file"] == "x/train.jsonl"
    assert explanation["clip_model"] == "assets/demo/models/tiny-clip.json"


def test_an_explicit_corpus_file_wins_and_configs_without_explanation_are_left_alone():
    from jsonargparse import Namespace

    from grpo_lightning.cli import link_reward_corpus

    def config(reward_funcs, reward_kwargs):
        return Namespace(
            model=Namespace(rewards=Namespace(funcs=reward_funcs, kwargs=reward_kwargs)),
            data=Namespace(train_file="train.jsonl"),
        )

    linked = link_reward_corpus(config(["accuracy", "explanation"], {"explanation": {"clip_weight": 1.0}}))
    assert linked.model.rewards.kwargs == {"explanation": {"clip_weight": 1.0, "corpus_file": "train.jsonl"}}
    linked = link_reward_corpus(config(["explanation"], None))
    assert linked.model.rewards.kwargs == {"explanation": {"corpus_file": "train.jsonl"}}
    linked = link_reward_corpus(config(["explanation"], {"explanation": {"corpus_file": "other.json"}}))
    assert linked.model.rewards.kwargs == {"explanation": {"corpus_file": "other.json"}}
    assert link_reward_corpus(config(["format"], None)).model.rewards.kwargs is None


# ------------------------------------------------------------------------------------------------ errors
def test_a_yaml_syntax_error_names_the_file_and_line_without_a_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  model_name_or_path: x\n  reward_funcs: [format\n  beta: 0.1\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(bad)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}, line 4, column 7: invalid YAML: expected ',' or ']', but got ':'")
    assert "(while parsing a flow sequence at line 3, column 17)" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_a_misspelt_option_shows_the_error_first_and_the_closest_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs" / "demo.yaml"), "--model.sampling.num_generatons", "4"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "error: unrecognized arguments: --model.sampling.num_generatons 4 "
        "(did you mean --model.sampling.num_generations?)",
        "tip: `python -m grpo_lightning fit --help` lists every option.",
    ]


def test_a_user_error_is_one_message_and_status_2_unless_the_traceback_is_asked_for(capsys, monkeypatch):
    args = ["fit", "--config", str(ROOT / "configs" / "demo.yaml"), "--model.rewards.funcs", "[acuracy]"]
    args += ["--model.rewards.weights", "[1.0]", "--model.rewards.kwargs", "null"]
    monkeypatch.delenv("GRPO_LIGHTNING_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown reward 'acuracy'. Registered rewards: accuracy, ")
    assert "Traceback" not in err and len(err.splitlines()) == 1
    monkeypatch.setenv("GRPO_LIGHTNING_TRACEBACK", "1")
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert "grpo_lightning.errors.ConfigError: Unknown reward 'acuracy'" in err
    assert err.splitlines()[-1].startswith("error: Unknown reward 'acuracy'.")


# ------------------------------------------------------------------------------------------------ a CPU run's output
def test_a_cpu_run_shows_optimizer_steps_and_no_deepspeed_warning(assets, data_kwargs, tmp_path):
    """`python -m grpo_lightning fit --config configs/demo.yaml` for one step, as a user sees it."""
    args = ["fit", "--config", str(ROOT / "configs" / "demo.yaml"), "--trainer.max_steps", "1"]
    args += ["--model.model_name_or_path", str(grpo_demo.internvl_path(assets))]
    args += ["--model.sampling.num_generations", "2"]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), "--trainer.limit_val_batches", "0"]
    args += ["--data.batch_size", "2", "--model.sampling.max_completion_length", "4"]
    for key, value in data_kwargs.items():
        args += [f"--data.{key}", value]
    env = {key: value for key, value in os.environ.items() if key != "DS_ACCELERATOR"}
    result = subprocess.run(
        [sys.executable, "-m", "grpo_lightning", *args], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Setting accelerator to CPU" not in output
    assert "Exported the trained model" in output  # the export, which imports DeepSpeed, ran
    bar = [line for line in output.replace("\r", "\n").splitlines() if line.startswith("train step:")]
    assert bar and "1/1" in bar[-1], bar
    assert "Epoch" not in output and "v_num" not in output


def test_the_progress_bar_counts_optimizer_steps_across_epochs_and_resumes():
    from types import SimpleNamespace

    from grpo_lightning.progress import StepProgressBar

    progress = StepProgressBar()
    progress.train_progress_bar = progress.init_train_tqdm()
    trainer = SimpleNamespace(max_steps=100, global_step=40, estimated_stepping_batches=100)
    progress.on_train_epoch_start(trainer)  # a run resumed at step 40, in its third epoch
    assert (progress.train_progress_bar.n, progress.train_progress_bar.total) == (40, 100)
    assert progress.train_progress_bar.desc.startswith("train step")
    trainer.global_step = 41
    progress.on_train_epoch_start(trainer)  # a new epoch does not restart the count
    assert progress.train_progress_bar.n == 41
    progress.train_progress_bar.close()
