"""`--ckpt_path FILE`: what the command line and configs set wins over the checkpoint's hyperparameters, the
checkpoint fills in the rest, and the LoRA structure always comes from it (also from a DeepSpeed checkpoint folder)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch

import grpo_demo
from grpo_lightning import __version__, evaluate
from grpo_lightning.checkpoint_files import CheckpointError
from grpo_lightning.cli import checkpoint_hyperparameters, main
from grpo_lightning.predictions_file import read_metadata
from tests.helpers import ROOT

#: What the checkpoint was trained with, beyond configs/demo.yaml (which sets none of these).
TRAINED = {"lora.r": 4, "lora.alpha": 8.0, "sampling.top_k": 5, "logging.num_completions": 2}


def saved_option(hparams: dict, dotted: str):
    """An option of saved hyperparameters (groups as dicts) by its dotted name, e.g. ``lora.r``."""
    group, name = dotted.split(".")
    return hparams[group][name]


def cli_args(subcommand: str, assets, data_kwargs, save_dir: Path, *extra: str) -> list[str]:
    args = [subcommand, "--config", str(ROOT / "configs" / "demo.yaml")]
    args += ["--model.model_name_or_path", str(grpo_demo.internvl_path(assets))]
    args += ["--trainer.logger.init_args.save_dir", str(save_dir), "--trainer.enable_progress_bar", "false"]
    args += ["--model.sampling.num_generations", "2", "--data.batch_size", "2", "--data.val_batch_size", "4"]
    for key, value in data_kwargs.items():
        args += [f"--data.{key}", value]
    return args + list(extra)


@pytest.fixture(scope="module")
def checkpoint(assets, data_kwargs, tmp_path_factory) -> Path:
    """A 2-step LoRA fit of the tiny InternVL with the hyperparameters in TRAINED."""
    save_dir = tmp_path_factory.mktemp("fit")
    extra = ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "0"]
    extra += ["--model.sampling.max_completion_length", "8"]
    for key, value in TRAINED.items():
        extra += [f"--model.{key}", str(value)]
    main(cli_args("fit", assets, data_kwargs, save_dir, *extra))
    (path,) = save_dir.rglob("last.ckpt")
    return path


def assert_trained_identity_and_hparams(cli, **given):
    groups = {name: dataclasses.asdict(getattr(cli.model, name)) for name in ("lora", "sampling", "logging")}
    assert {key: saved_option(groups, key) for key in TRAINED} == {**TRAINED, **given}
    adapters = [name for name, _ in cli.model.model.named_parameters() if "lora_A" in name]
    assert adapters, "the LoRA structure of the checkpoint was not rebuilt"


def test_validate_takes_the_command_line_over_the_checkpoint(assets, data_kwargs, checkpoint, tmp_path):
    args = cli_args("validate", assets, data_kwargs, tmp_path, "--ckpt_path", str(checkpoint))
    args += ["--model.sampling.max_completion_length", "3", "--model.sampling.top_k", "7"]
    args += ["--trainer.limit_val_batches", "1"]
    cli = main(args)
    assert cli.model.sampling.max_completion_length == 3
    assert_trained_identity_and_hparams(cli, **{"sampling.top_k": 7})
    assert "val/accuracy" in cli.trainer.callback_metrics


def test_test_takes_the_command_line_over_the_checkpoint(assets, data_kwargs, checkpoint, tmp_path):
    args = cli_args("test", assets, data_kwargs, tmp_path, "--ckpt_path", str(checkpoint))
    args += [
        "--model.sampling.max_completion_length",
        "3",
        "--model.evaluation.metrics",
        "[bleu]",
        "--trainer.limit_test_batches",
        "1",
    ]
    cli = main(args)
    assert cli.model.sampling.max_completion_length == 3
    assert list(cli.model.evaluation.metrics) == ["bleu"]
    assert_trained_identity_and_hparams(cli)
    assert "test/unfiltered/BLEU-4" in cli.trainer.callback_metrics
    assert "test/unfiltered/CIDEr" not in cli.trainer.callback_metrics


def test_predict_writes_where_asked_with_the_length_asked(assets, data_kwargs, checkpoint, tmp_path, monkeypatch):
    predictions = tmp_path / "asked" / "predictions.json"
    args = cli_args("predict", assets, data_kwargs, tmp_path / "logs", "--ckpt_path", str(checkpoint))
    args += ["--model.evaluation.predictions_file", str(predictions), "--model.sampling.max_completion_length", "3"]
    args += ["--trainer.limit_predict_batches", "1"]
    cli = main(args)
    assert_trained_identity_and_hparams(cli)
    records = json.loads(predictions.read_text(encoding="utf-8"))
    assert len(records) == 4  # one batch of data.val_batch_size
    tokenizer = cli.model.adapter.processor.tokenizer
    lengths = [len(tokenizer(r["completion"], add_special_tokens=False)["input_ids"]) for r in records]
    assert max(lengths) <= 3, lengths
    assert not list((tmp_path / "logs").rglob("predictions*.json"))
    # what made the predictions, beside them; the evaluation report's header names it
    reading = read_metadata(predictions)
    meta = reading.metadata
    assert reading.status == "found" and reading.path == predictions.with_name("predictions.meta.json")
    assert meta.model_name_or_path == str(grpo_demo.internvl_path(assets))
    # last.ckpt is a link that moves on with the run: the file it points to is what predicted
    assert checkpoint.is_symlink() and not Path(meta.checkpoint).is_symlink()
    assert Path(meta.checkpoint).resolve() == checkpoint.resolve()
    assert meta.protocol == "normalized" and meta.dataset_file == data_kwargs["val_file"]  # no test file: val
    assert meta.grpo_lightning_version == __version__ and meta.num_records == 4
    age = datetime.now(timezone.utc) - datetime.fromisoformat(meta.created)
    assert 0 <= age.total_seconds() < 600
    monkeypatch.setenv("PATH", str(tmp_path))  # no Java: METEOR is left out (and the test stays fast)
    report = tmp_path / "report.html"
    evaluate.main([str(predictions), "--html", str(report)])
    page = report.read_text(encoding="utf-8")
    for value in (meta.model_name_or_path, meta.checkpoint, meta.dataset_file, meta.created):
        assert f">{value}</dd>" in page


def test_resuming_fit_takes_the_command_line_over_the_checkpoint(assets, data_kwargs, checkpoint, tmp_path):
    args = cli_args("fit", assets, data_kwargs, tmp_path, "--ckpt_path", str(checkpoint))
    args += ["--trainer.max_steps", "3", "--trainer.limit_val_batches", "0"]
    args += ["--model.sampling.max_completion_length", "3"]
    args += ["--model.logging.num_completions", "1"]
    cli = main(args)
    assert cli.trainer.global_step == 3  # resumed at 2, one more step
    assert cli.model.sampling.max_completion_length == 3
    assert_trained_identity_and_hparams(cli, **{"logging.num_completions": 1})


def test_a_different_identity_on_the_command_line_is_replaced_with_a_note(
    assets, data_kwargs, checkpoint, tmp_path, capsys
):
    args = cli_args("validate", assets, data_kwargs, tmp_path, "--ckpt_path", str(checkpoint))
    args += ["--model.lora.r", "16", "--trainer.limit_val_batches", "1"]
    cli = main(args)
    assert_trained_identity_and_hparams(cli)
    note = f"--ckpt_path {checkpoint}: model.lora.r is 4 as in training, not 16: the checkpoint's weights need it."
    assert note in capsys.readouterr().err.splitlines()


def test_a_moved_base_model_is_taken_from_the_command_line_with_a_note(
    assets, data_kwargs, checkpoint, tmp_path, capsys
):
    moved = tmp_path / "moved-model"
    shutil.copytree(grpo_demo.internvl_path(assets), moved)
    args = cli_args("validate", assets, data_kwargs, tmp_path, "--ckpt_path", str(checkpoint))
    args += ["--model.model_name_or_path", str(moved), "--trainer.limit_val_batches", "1"]
    cli = main(args)
    assert cli.model.model_name_or_path == str(moved)
    assert_trained_identity_and_hparams(cli)
    note = (
        f"--ckpt_path {checkpoint}: the base model is {str(moved)!r} (trained from "
        f"{str(grpo_demo.internvl_path(assets))!r}); it must be the same checkpoint, wherever it is now."
    )
    assert note in capsys.readouterr().err.splitlines()


def test_the_hyperparameters_of_a_deepspeed_checkpoint_folder_are_read(checkpoint, tmp_path):
    """Lightning's DeepSpeed checkpoints are folders; their client state (hyperparameters included) is saved in
    ``checkpoint/mp_rank_00_model_states.pt`` beside the weights."""
    folder = tmp_path / "step=2.ckpt" / "checkpoint"
    folder.mkdir(parents=True)
    state = torch.load(checkpoint, weights_only=False)
    torch.save(
        {"module": state["state_dict"], "hyper_parameters": state["hyper_parameters"]},
        folder / "mp_rank_00_model_states.pt",
    )
    hparams = checkpoint_hyperparameters(folder.parent)
    assert {key: saved_option(hparams, key) for key in TRAINED} == TRAINED
    with pytest.raises(CheckpointError, match=r"a folder, but not a DeepSpeed checkpoint \(no \*/mp_rank_00_model"):
        checkpoint_hyperparameters(tmp_path)


def test_checkpoint_options_that_do_not_parse_are_one_message(assets, data_kwargs, checkpoint, tmp_path, capsys):
    state = torch.load(checkpoint, weights_only=False)
    state["hyper_parameters"]["sampling"]["num_generations"] = "many"
    broken = tmp_path / "broken.ckpt"
    torch.save(state, broken)
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args("validate", assets, data_kwargs, tmp_path, "--ckpt_path", str(broken)))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --ckpt_path {broken}: the module options saved in the checkpoint do not parse")
    assert "Traceback" not in err and "usage" not in err.lower()
