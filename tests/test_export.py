"""Hugging Face export: from a trained module, from its checkpoint (CLI), at fit end; LoRA merged; hub push mocked."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

import grpo_demo
from grpo_lightning.adapters import build_adapter
from grpo_lightning.callbacks import HFExportCallback, continue_logger_version
from grpo_lightning.errors import ConfigError
from grpo_lightning.export import export_checkpoint, export_model, main, push_to_hub
from tests.helpers import ManualBoringModel, fit_with, grpo_run, make_module, quiet_trainer, record_hub_calls

# The LoRA targets of the tests: query and value projections of the language model (not the vision tower's).
LANGUAGE_QV = r"model\.language_model\..*\.(q_proj|v_proj)"


@pytest.fixture(scope="module")
def run(assets, data_kwargs, tmp_path_factory):
    return grpo_run(assets, data_kwargs, tmp_path_factory)


def logits(model: torch.nn.Module, processor, model_type: str = "internvl") -> torch.Tensor:
    """The model's logits on two (image, question) prompts, built by the adapter from ``processor``."""
    adapter = build_adapter(model_type, processor)
    images = [Image.new("RGB", (64, 64), (200, 30, 30)), Image.new("RGB", (64, 64), (20, 30, 200))]
    batch = adapter.prepare_prompts(images, ["Hình có màu gì?", "Có bao nhiêu hình tròn?"])
    model.eval()
    with torch.no_grad():
        return model(**batch.token_inputs([0, 1]), **batch.visual_for([0, 1])).logits


def assert_same_weights(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=0, atol=0, msg=key)


def assert_is_the_trained_model(out_dir: Path, run) -> AutoModelForImageTextToText:
    """``out_dir`` loads offline with the Auto classes and is the trained policy, not the base checkpoint."""
    exported = AutoModelForImageTextToText.from_pretrained(out_dir)
    trained = run.module.model.state_dict()
    assert_same_weights(exported.state_dict(), trained)
    base = AutoModelForImageTextToText.from_pretrained(run.module.model_name_or_path).state_dict()
    assert any(not torch.equal(base[k], v) for k, v in trained.items()), "training changed nothing: no evidence"
    processor = AutoProcessor.from_pretrained(out_dir)
    assert processor.chat_template == run.module.adapter.processor.chat_template
    torch.testing.assert_close(
        logits(exported, processor), logits(run.module.model, run.module.adapter.processor), rtol=0, atol=0
    )
    assert (out_dir / "model.safetensors").is_file() and (out_dir / "generation_config.json").is_file()
    return exported


def test_export_model_saves_the_trained_module(run, tmp_path):
    before = {k: v.clone() for k, v in run.module.model.state_dict().items()}
    out = export_model(run.module.model, run.module.adapter.processor, tmp_path / "export")
    assert out == tmp_path / "export" and [p.name for p in tmp_path.iterdir()] == ["export"]  # no temp folder left
    assert_is_the_trained_model(out, run)
    assert_same_weights(run.module.model.state_dict(), before)
    with pytest.raises(FileExistsError, match="already exists and is not empty; export to a new folder"):
        export_model(run.module.model, run.module.adapter.processor, out)


def test_the_callback_exports_and_pushes_at_fit_end(run):
    out = Path(run.trainer.log_dir) / "hf_export"
    assert run.export.exported_to == out
    assert_is_the_trained_model(out, run)
    assert [name for name, _ in run.hub_calls] == ["create_repo", "upload_folder"]
    create, upload = run.hub_calls[0][1], run.hub_calls[1][1]
    assert create == {
        "repo_id": "someone/tiny-grpo",
        "token": None,
        "private": True,
        "repo_type": "model",
        "exist_ok": True,
    }
    assert upload["repo_id"] == "someone/tiny-grpo" and Path(upload["folder_path"]) == out
    assert upload["commit_message"] == "GRPO fine-tuning, 3 steps"
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= set(upload["files"])


def test_the_cli_exports_a_checkpoint(run, tmp_path, capsys):
    out = main([str(run.checkpoints / "last.ckpt"), str(tmp_path / "from-ckpt")])
    assert f"to {tmp_path / 'from-ckpt'}" in capsys.readouterr().out
    assert_is_the_trained_model(out, run)

    out16 = main([str(run.checkpoints / "last.ckpt"), str(tmp_path / "bf16"), "--dtype", "bfloat16"])
    exported = AutoModelForImageTextToText.from_pretrained(out16, dtype="auto")
    assert exported.dtype == torch.bfloat16
    expected = {k: v.to(torch.bfloat16) for k, v in run.module.model.state_dict().items()}
    assert_same_weights(exported.state_dict(), expected)
    assert next(run.module.model.parameters()).dtype == torch.float32, "the export changed the trained model"


def test_a_lora_model_is_exported_merged_and_left_unchanged(assets, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    path = grpo_demo.internvl_path(assets)
    processor = AutoProcessor.from_pretrained(path)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LANGUAGE_QV)
    peft_model = get_peft_model(AutoModelForImageTextToText.from_pretrained(path), config)
    with torch.no_grad():  # away from the identity (lora_B starts at zero), so that merging matters
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    before = {k: v.clone() for k, v in peft_model.state_dict().items()}
    with peft_model.disable_adapter():
        base_logits = logits(peft_model, processor)

    out = export_model(peft_model, processor, tmp_path / "merged")
    exported = AutoModelForImageTextToText.from_pretrained(out)
    assert not any("lora" in key for key in exported.state_dict())
    assert not (out / "adapter_config.json").exists()
    expected = logits(peft_model, processor)
    assert (expected - base_logits).abs().max() > 1e-2, "the adapters change nothing: the check below proves nothing"
    torch.testing.assert_close(logits(exported, processor), expected, rtol=1e-5, atol=1e-5)
    assert isinstance(peft_model, PeftModel)
    assert_same_weights(peft_model.state_dict(), before)


def test_a_lora_checkpoint_is_rebuilt_with_its_adapters_and_merged(assets, tmp_path):
    module = make_module(assets, loss=dict(beta=0.0), lora=dict(r=4, alpha=8, dropout=0.0, target_modules=["q_proj"]))
    module.configure_model()
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ckpt = tmp_path / "lora.ckpt"  # the two entries of a Lightning checkpoint that the export reads
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, ckpt)

    out = export_checkpoint(ckpt, tmp_path / "merged")
    exported = AutoModelForImageTextToText.from_pretrained(out)
    assert not any("lora" in key for key in exported.state_dict())
    processor = module.adapter.processor
    torch.testing.assert_close(logits(exported, processor), logits(module.model, processor), rtol=1e-5, atol=1e-5)

    # The same weights without the LoRA hyper-parameters do not fit the rebuilt model: refused, not exported.
    hparams = {k: v for k, v in module.hparams.items() if k != "lora"}
    torch.save({"hyper_parameters": hparams, "state_dict": module.state_dict()}, ckpt)
    with pytest.raises(ValueError, match=r"do not fit the model rebuilt from its hyper-parameters .* lora\.r=0\)"):
        export_checkpoint(ckpt, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_push_to_hub_creates_the_repository_and_uploads_the_folder(monkeypatch, tmp_path):
    calls = record_hub_calls(monkeypatch)
    (tmp_path / "config.json").write_text("{}")
    url = push_to_hub(tmp_path, "org/model", private=False, token="hf_test", commit_message="Step 3000")
    assert url == "https://huggingface.co/org/model"
    assert calls == [
        (
            "create_repo",
            {"repo_id": "org/model", "token": "hf_test", "private": False, "repo_type": "model", "exist_ok": True},
        ),
        (
            "upload_folder",
            {
                "repo_id": "org/model",
                "folder_path": tmp_path,
                "repo_type": "model",
                "commit_message": "Step 3000",
                "files": ["config.json"],
            },
        ),
    ]
    with pytest.raises(FileNotFoundError, match="holds no exported model"):
        push_to_hub(tmp_path / "missing", "org/model")


def test_an_export_folder_in_use_is_refused_before_training(tmp_path):
    occupied = tmp_path / "export"
    occupied.mkdir()
    (occupied / "config.json").write_text("{}")
    model = ManualBoringModel()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ConfigError, match=r"would export to .*export at the end of fit, but it holds files already"):
        fit_with(model, tmp_path / "logs", 2, [HFExportCallback(export_dir=str(occupied))])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)), "a step ran"
    assert [p.name for p in occupied.iterdir()] == ["config.json"]


def test_pushing_without_a_repository_id_is_refused(capsys):
    with pytest.raises(ValueError, match=r"HFExportCallback\(push_to_hub=True\) needs hub_model_id"):
        HFExportCallback(push_to_hub=True)
    with pytest.raises(SystemExit) as exit_info:
        main(["model.ckpt", "out", "--push-to-hub"])
    assert exit_info.value.code == 2
    assert "--push-to-hub needs --hub-model-id user-or-org/name" in capsys.readouterr().err


def test_only_a_resumed_run_replaces_the_export_in_its_log_folder(tmp_path):
    """A new run that a fixed logger version puts into an earlier run's folder is refused before training, as with
    an export_dir; a run that resumes a checkpoint of that folder (continue_logger_version) may replace it."""
    folder = tmp_path / "logs" / "run" / "v"
    (folder / "hf_export").mkdir(parents=True)
    (folder / "hf_export" / "config.json").write_text("{}")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"")

    def trainer_with(callback: HFExportCallback) -> L.Trainer:
        return quiet_trainer(
            max_steps=1, logger=TensorBoardLogger(tmp_path / "logs", name="run", version="v"), callbacks=[callback]
        )

    with pytest.raises(ConfigError, match="holds files already"):
        trainer_with(HFExportCallback()).fit(ManualBoringModel())
    resumed = HFExportCallback()
    assert continue_logger_version(trainer_with(resumed), folder / "checkpoints" / "last.ckpt") == [str(folder)]
    assert resumed.continues_run


def test_the_export_command_line_says_a_mistake_in_one_line_with_status_2(tmp_path, capsys):
    occupied = tmp_path / "out"
    occupied.mkdir()
    (occupied / "config.json").write_text("{}")
    not_a_checkpoint = tmp_path / "notes.ckpt"
    torch.save({"weights": torch.ones(2)}, not_a_checkpoint)
    cases = {
        (str(tmp_path / "missing.ckpt"), str(tmp_path / "new")): f"No checkpoint at {tmp_path / 'missing.ckpt'}; ",
        (str(not_a_checkpoint), str(tmp_path / "new")): f"{not_a_checkpoint} is not a GRPOModule checkpoint",
        (str(not_a_checkpoint), str(occupied)): f"{occupied} already exists and is not empty",
    }
    for args, expected in cases.items():
        with pytest.raises(SystemExit) as stopped:
            main(list(args))
        assert stopped.value.code == 2, args
        err = capsys.readouterr().err
        assert err.startswith(f"error: {expected}") and len(err.strip().splitlines()) == 1, err
