"""Loggers other than TensorBoard get what a run logs: W&B offline (``configs/demo_wandb.yaml``) and MLflow with a
local file store, each read back from the run's own files, with no server and no network."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest

from grpo_lightning.cli import main as cli_main
from grpo_lightning.data import ViVQAXDataModule
from scripts.tb_scalars import read_scalars
from tests.helpers import ROOT, fit_args, make_module, quiet_trainer

STEPS, NUM_COMPLETIONS = 3, 3


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B offline, quiet and kept inside ``tmp_path``: its settings, cache and staging folders too. Any server it
    tried anyway would be a closed local port. Its run is finished and its service process stopped afterwards."""
    wandb = pytest.importorskip("wandb", reason="the wandb extra (pip install -e '.[wandb]'; the dev extra has it)")
    for variable in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(variable, raising=False)
    settings = {
        "WANDB_MODE": "offline",  # WandbLogger(offline=True) sets it for the process: restored afterwards
        "WANDB_DIR": str(tmp_path),
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
        "WANDB_BASE_URL": "http://127.0.0.1:9",
    }
    for variable, value in settings.items():
        monkeypatch.setenv(variable, value)
    yield wandb
    wandb.finish()
    wandb.teardown()


def test_the_wandb_config_logs_scalars_completions_and_hyperparameters_offline(
    offline_wandb, assets, tmp_path, monkeypatch
):
    from tests import wandb_offline

    wandb = offline_wandb
    monkeypatch.chdir(tmp_path)  # the config's save_dir, lightning_logs, is relative
    overlay = ["--config", str(ROOT / "configs" / "demo_wandb.yaml"), "--trainer.max_steps", str(STEPS)]
    overlay += ["--model.logging.completions_every_n_steps", "1"]
    overlay += ["--model.logging.num_completions", str(NUM_COMPLETIONS)]
    cli = cli_main(fit_args(assets, tmp_path, *overlay))
    # Lightning leaves the run open. Finishing it records its end; stopping the service waits for the run's files to
    # be written whole (wandb 0.19 could return from finish() before its transaction log was on disk).
    wandb.finish()
    wandb.teardown()
    assert [type(logger).__name__ for logger in cli.trainer.loggers] == ["TensorBoardLogger", "WandbLogger"]

    run = wandb_offline.offline_run_folder(tmp_path / "lightning_logs")
    rows = wandb_offline.history(run)
    for key in ("train/reward", "train/loss", "train/rewards/tag_count", "train/rewards/format", "train/entropy"):
        logged = [(row["trainer/global_step"], row[key]) for row in rows if key in row]
        assert [step for step, _ in logged] == list(range(STEPS)), key
        assert all(isinstance(value, float | int) and math.isfinite(value) for _, value in logged), (key, logged)

    tables = [(row["trainer/global_step"], row["train/completions"]) for row in rows if "train/completions" in row]
    assert [step for step, _ in tables] == list(range(STEPS))
    for _, value in tables:
        content = wandb_offline.table(run, value)
        assert content["columns"] == ["prompt", "completion", "reward", "tag_count", "format"]
        assert len(content["data"]) == NUM_COMPLETIONS
        for prompt, completion, reward, *scores in content["data"]:
            assert isinstance(prompt, str) and isinstance(completion, str)
            assert all(isinstance(number, float | int) for number in (reward, *scores))

    config = wandb_offline.config(run)
    assert config["sampling"]["num_generations"] == 2 and config["loss"]["beta"] == 0
    assert config["rewards"]["funcs"] == ["tag_count", "format"] and config["batch_size"] == 2

    # TensorBoard, the first logger, still holds the run's folder and its scalars
    scalars = read_scalars(tmp_path / "lightning_logs" / "demo_wandb" / "version_0")
    assert [step for step, _ in scalars["train/reward"]] == list(range(STEPS))
    assert not any(tmp_path.glob("lightning_logs/rollouts")), "a run's files went to the shared W&B folder"


def test_mlflow_with_a_local_file_store_gets_scalars_completions_and_hyperparameters(
    assets, data_kwargs, tmp_path, monkeypatch
):
    pytest.importorskip("mlflow", reason="the mlflow extra (pip install -e '.[mlflow]'; the dev extra has it)")
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.tracking import MlflowClient

    store = f"file:{tmp_path / 'mlruns'}"
    # MLflow 3 keeps its file store only on request; no usage reports either
    for variable in ("MLFLOW_ALLOW_FILE_STORE", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
        monkeypatch.setenv(variable, "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    logger = MLFlowLogger(experiment_name="grpo-demo", tracking_uri=store)
    module = make_module(assets, logging=dict(num_completions=NUM_COMPLETIONS, completions_every_n_steps=1))
    data = ViVQAXDataModule(**{**data_kwargs, "val_file": None}, batch_size=2, shuffle=False)
    L.seed_everything(0)
    quiet_trainer(max_steps=STEPS, logger=logger).fit(module, datamodule=data)

    client = MlflowClient(tracking_uri=store)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    for key in ("train/reward", "train/loss", "train/rewards/tag_count", "train/rewards/format"):
        logged = sorted((m.step, m.value) for m in client.get_metric_history(logger.run_id, key))
        assert [step for step, _ in logged] == list(range(STEPS)), key
        assert all(math.isfinite(value) for _, value in logged), (key, logged)
    assert run.data.params["sampling/num_generations"] == "4" and run.data.params["batch_size"] == "2"

    files = sorted(a.path for a in client.list_artifacts(logger.run_id, "train/completions"))
    assert files == [f"train/completions/step={step}.md" for step in range(STEPS)]
    text = Path(client.download_artifacts(logger.run_id, files[0], str(tmp_path))).read_text(encoding="utf-8")
    assert text.startswith("| prompt | completion | reward | tag_count | format |")
    assert text.count("\n| ") == NUM_COMPLETIONS
