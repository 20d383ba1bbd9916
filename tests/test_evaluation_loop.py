"""`validate`, `test` and `predict` through the CLI: VQA-NLE metrics in TensorBoard, a predictions file the
evaluator scores without conversion."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import grpo_demo
from grpo_lightning.cli import main as cli_main
from grpo_lightning.evaluate import main as evaluate_main
from scripts.tb_scalars import read_runs, read_scalars
from tests.helpers import ROOT

METRICS = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE_L", "CIDEr"]


def demo_args(subcommand: str, assets, data_kwargs, tmp_path, *extra: str) -> list[str]:
    args = [subcommand, "--config", str(ROOT / "configs" / "demo.yaml")]
    args += ["--model.model_name_or_path", str(grpo_demo.internvl_path(assets))]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]
    for key, value in data_kwargs.items():
        args += [f"--data.{key}", value]
    return args + list(extra)


@pytest.mark.slow
def test_validate_logs_accuracy_and_every_explanation_metric(assets, data_kwargs, tmp_path):
    cli_main(demo_args("validate", assets, data_kwargs, tmp_path, "--trainer.limit_val_batches", "1.0"))
    scalars = read_scalars(tmp_path)
    expected = {"val/accuracy", "val/reward"}
    expected |= {f"val/{kind}/{name}" for kind in ("unfiltered", "scaled") for name in METRICS}
    assert expected <= scalars.keys(), sorted(expected - scalars.keys())
    accuracy = scalars["val/accuracy"][0][1]
    assert 0.0 <= accuracy <= 1.0
    for name in METRICS:
        unfiltered = scalars[f"val/unfiltered/{name}"][0][1]
        assert scalars[f"val/scaled/{name}"][0][1] == pytest.approx(unfiltered * accuracy, abs=1e-6)


def test_predict_writes_the_public_format_that_the_evaluator_scores(assets, data_kwargs, tmp_path, capsys):
    out = tmp_path / "predictions.json"
    cli_main(
        demo_args(
            "predict",
            assets,
            data_kwargs,
            tmp_path,
            "--model.evaluation.predictions_file",
            str(out),
            "--data.val_batch_size",
            "5",
        )
    )
    records = json.loads(out.read_text(encoding="utf-8"))
    val = json.loads(grpo_demo.split_json_path(assets, "val").read_text(encoding="utf-8"))
    assert [r["question_id"] for r in records] == [r["question_id"] for r in val]  # every sample once, in order
    for record, source in zip(records, val, strict=True):
        assert record["gt_ans"] == source["answer"] and record["gt_explain"] == source["explanation"]
        assert record["question"] == source["question"] and record["image_name"] == source["image_name"]
        assert {"pred_ans", "pred_explain", "completion", "think"} <= record.keys()
    scores_file = tmp_path / "scores.json"
    evaluate_main([str(out), "--out", str(scores_file), "--protocol", "normalized"])
    scores = json.loads(scores_file.read_text(encoding="utf-8"))
    assert scores["protocol"] == "normalized" and scores["num_samples"] == len(val)
    assert {"accuracy", "unfiltered", "filtered", "scaled"} <= scores.keys()


def test_validate_from_a_checkpoint_and_test_split(assets, data_kwargs, tmp_path):
    """Fit 2 steps with a checkpoint, then `validate --ckpt_path` and `test` on the held-out split."""
    fit_args = demo_args(
        "fit",
        assets,
        data_kwargs,
        tmp_path / "fit",
        "--trainer.max_steps",
        "2",
        "--trainer.limit_val_batches",
        "0",
        "--model.evaluation.metrics",
        "[bleu, cider]",
    )
    cli_main(fit_args)
    (checkpoint,) = (tmp_path / "fit").rglob("last.ckpt")
    cli_main(
        demo_args(
            "validate",
            assets,
            data_kwargs,
            tmp_path / "val",
            "--ckpt_path",
            str(checkpoint),
            "--model.evaluation.metrics",
            "[bleu, cider]",
        )
    )
    assert "val/unfiltered/CIDEr" in read_scalars(tmp_path / "val")
    cli_main(demo_args("test", assets, data_kwargs, tmp_path / "test", "--model.evaluation.metrics", "[bleu, cider]"))
    assert {"test/accuracy", "test/unfiltered/BLEU-4", "test/reward"} <= read_scalars(tmp_path / "test").keys()


def test_evaluations_of_a_checkpoint_log_inside_its_run_and_tb_scalars_names_each_run(assets, data_kwargs, tmp_path):
    """`validate` and `predict --ckpt_path` of a run's checkpoint, with the run's own logger settings, log in
    `<run>/version_0/<subcommand>/version_K`: the run name keeps one version, the training run's."""
    extra = ["--trainer.limit_val_batches", "1", "--model.evaluation.metrics", "[bleu]"]
    cli_main(demo_args("fit", assets, data_kwargs, tmp_path, "--trainer.max_steps", "2", *extra))
    run = tmp_path / "demo" / "version_0"
    checkpoint = run / "checkpoints" / "last.ckpt"
    for _ in range(2):
        cli_main(demo_args("validate", assets, data_kwargs, tmp_path, "--ckpt_path", str(checkpoint), *extra))
    cli_main(demo_args("predict", assets, data_kwargs, tmp_path, "--ckpt_path", str(checkpoint), *extra))
    assert [p.name for p in (tmp_path / "demo").iterdir()] == ["version_0"]  # no evaluation as a training version
    assert sorted(p.name for p in (run / "validate").iterdir()) == ["version_0", "version_1"]
    assert (run / "predict" / "version_0" / "predictions.json").is_file()
    training, validation = read_scalars(run), read_scalars(run / "validate" / "version_1")
    assert [step for step, _ in training["train/reward"]] == [0, 1] and "val/accuracy" not in training
    assert [step for step, _ in validation["val/accuracy"]] == [0] and "train/reward" not in validation
    runs = read_runs(tmp_path / "demo")
    evaluations = ["predict/version_0", "validate/version_0", "validate/version_1"]  # predict logs its settings
    assert list(runs) == ["version_0"] + [f"version_0/{name}" for name in evaluations]
    with pytest.raises(ValueError, match=r"holds 4 runs \(version_0, version_0/predict/version_0, version_0/valid"):
        read_scalars(tmp_path / "demo")
    shown = subprocess.run(
        [sys.executable, "scripts/tb_scalars.py", str(tmp_path / "demo"), "--tags", "val/accuracy"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert shown[0::2] == [f"== {tmp_path / 'demo' / name}" for name in runs]
    assert all(line.startswith("val/accuracy: ") for line in shown[1::2])
