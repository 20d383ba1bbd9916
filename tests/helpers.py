"""What the test files share: the repository's paths and the real ViVQA-X data's folder, the model families, a
GRPOModule and a quiet CPU Trainer as the tests build them, short fits, combinations of the loss options, the command
line under test, runs on two processes, rewards that runs name by dotted path (``tests.helpers:<name>``), and
Chromium for the HTML pages.

The fixtures live in ``tests/conftest.py``; the DeepSpeed runs on CPU processes in ``tests/deepspeed_cpu.py``."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

import grpo_demo
from grpo_lightning.adapters import VLMAdapter
from grpo_lightning.callbacks import AtomicCheckpointIO, HFExportCallback, StepCheckpoint
from grpo_lightning.cli import main as cli_main
from grpo_lightning.config import GROUPS
from grpo_lightning.data import ViVQAXDataModule
from grpo_lightning.module import GRPOModule

# ------------------------------------------------------------------------------------------------------ paths
#: The repository root.
ROOT = Path(__file__).resolve().parents[1]

#: The folder of the real ViVQA-X data (``vivqax/``: the splits; ``reference/``: a published run's predictions):
#: ``$VIVQAX_DIR``, by default ``../shared/data`` beside the repository. The tests that read it skip without it.
VIVQAX_DIR = Path(os.environ.get("VIVQAX_DIR") or ROOT.parent / "shared" / "data")


def vivqax_absent(path: Path) -> str:
    """The reason to skip a test that needs ``path``, a file or folder of the real ViVQA-X data, which is missing."""
    return (
        f"{path} is absent (VIVQAX_DIR names the folder of the real ViVQA-X data; by default ../shared/data beside "
        "the repository)"
    )


# ----------------------------------------------------------------------------------------------- model families
#: Where the ``assets`` fixture puts a tiny Qwen2.5-VL beside the demo's InternVL and Qwen2-VL.
QWEN2_5_VL_SUBDIR = "models/tiny-qwen2_5vl"
#: The vLLM engine's environment (``make vllm-env``); the ``engine_python`` fixture stops a test that needs it.
ENGINE_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
#: The engine's settings in the tests: a small CPU KV cache (each engine process holds it).
ENGINE_OPTIONS = {"python": str(ENGINE_PYTHON), "kv_cache_gib": 1, "max_model_len": 2048, "max_num_seqs": 64}

#: The model families the adapters support, each with its checkpoint under the ``assets`` fixture.
FAMILY_SUBDIRS = {
    "internvl": grpo_demo.INTERNVL_SUBDIR,
    "qwen2_vl": grpo_demo.QWEN2VL_SUBDIR,
    "qwen2_5_vl": QWEN2_5_VL_SUBDIR,
}
FAMILIES = tuple(FAMILY_SUBDIRS)


# ------------------------------------------------------------------------------------------- module and trainer
# The tests' settings of each group; a test gives the fields it changes as a dict (e.g. ``loss=dict(beta=0.0)``).
TEST_GROUPS = {
    "rewards": {"funcs": ["tag_count", "format"]},
    "sampling": {"num_generations": 4, "max_completion_length": 12},
    "loss": {"beta": 0.04, "micro_batch_size": 8},
    "logging": {"completions_every_n_steps": 1},
}

#: A tiny random model learns the answer tags with these settings (the learning tests of both rollout engines).
TAG_LEARNING = dict(
    optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3),
    rewards=dict(funcs=["tag_count"]),
    sampling=dict(num_generations=8, max_completion_length=16),
    loss=dict(beta=0.0, micro_batch_size=32),
    logging=dict(completions_every_n_steps=0),
)


def make_module(assets, family: str = "internvl", **overrides) -> GRPOModule:
    kwargs = dict(
        model_name_or_path=str(assets / FAMILY_SUBDIRS[family]),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3),
    )
    for name, group in GROUPS.items():
        fields = {**TEST_GROUPS.get(name, {}), **overrides.pop(name, {})}
        if fields:
            kwargs[name] = group(**fields)
    kwargs.update(overrides)
    return GRPOModule(**kwargs)


def quiet_trainer(**overrides: Any) -> L.Trainer:
    """A Lightning Trainer on one CPU device that only trains: no logger, checkpoints, progress bar, model summary,
    sanity check or validation batches; a logger given in ``overrides`` gets every step. ``overrides`` add to or
    replace these settings (a logger, ``enable_checkpointing=True`` with checkpoint callbacks, a strategy...)."""
    settings = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    return L.Trainer(**(settings | overrides))


def fit(module, data_kwargs, tmp_path, steps: int, batch_size: int = 2, seed: int = 0) -> L.Trainer:
    """``steps`` steps on the demo data in file order, logged to TensorBoard under ``tmp_path / "run"``."""
    L.seed_everything(seed)
    trainer = quiet_trainer(max_steps=steps, logger=TensorBoardLogger(tmp_path, name="run"))
    data = ViVQAXDataModule(**data_kwargs, batch_size=batch_size, shuffle=False)
    trainer.fit(module, datamodule=data)
    return trainer


def flat_params(module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.model.parameters()])


# ---------------------------------------------------------------------------------------- composed loss options
@dataclass(frozen=True)
class LossCombination:
    """Loss options that compose, and the metrics that show they acted (each must be logged at every step).

    Attributes:
        options: ``loss`` fields, added to :data:`COMPOSED_UPDATE`'s.
        metrics: ``train/*`` metrics that only these options log; each is above 0 at some step of the resume test.
    """

    options: dict[str, Any]
    metrics: tuple[str, ...] = ()


#: The update under every :data:`LOSS_COMBINATIONS` entry: 2 optimizer steps per rollout (old log-probs, ratios away
#: from 1) and micro-batches of 3 sequences, smaller than a process's batch and not dividing it.
COMPOSED_UPDATE = {"num_iterations": 2, "micro_batch_size": 3}

#: The adaptive entropy coefficient of the tests: the target lies far above the tiny model's entropy, so the
#: coefficient rises by ``entropy_coef_delta`` each optimizer step.
ADAPTIVE_ENTROPY = {"entropy_coef": 0.02, "adaptive_entropy": True, "entropy_target": 50.0, "entropy_coef_delta": 0.01}

#: Combinations of the loss options that between them take every value of ``policy_loss``, ``kl_estimator`` and
#: ``advantage_estimator``, and turn on ``dual_clip``, ``kl_in_reward``, ``kl_bias_correction``, ``entropy_coef``,
#: ``adaptive_entropy`` and ``sft_coef`` with its decay (still above 0 where a run resumes, 0 by its end):
#: tests/test_resume.py resumes each, tests/test_distributed.py runs two on 2 processes. A new loss option joins as an
#: entry (or a field of one). The caps (``cispo_max_weight``, ``dual_clip``) are tight, so that they act within the
#: first steps of the tiny model.
LOSS_COMBINATIONS = {
    "sapo-k2-rloo-entropy": LossCombination(
        dict(
            policy_loss="sapo",
            kl_estimator="k2",
            kl_bias_correction=True,
            advantage_estimator="rloo",
            scale_rewards="none",
            entropy_coef=0.01,
        ),
        ("train/sapo/gate", "train/entropy_coef"),
    ),
    "cispo-k1-kl_in_reward-reinforce_pp_baseline": LossCombination(
        dict(
            policy_loss="cispo",
            cispo_max_weight=1.2,
            kl_estimator="k1",
            kl_in_reward=True,
            advantage_estimator="reinforce_pp_baseline",
            scale_rewards="batch",
        ),
        ("train/clip_ratio/cispo",),
    ),
    "gmpo-k3+-grpo_passk": LossCombination(
        dict(policy_loss="gmpo", kl_estimator="k3+", advantage_estimator="grpo_passk"),
        ("train/clip_ratio/gmpo",),
    ),
    "ppo-dual_clip-abs-reinforce_pp-adaptive_entropy": LossCombination(
        dict(
            policy_loss="ppo",
            dual_clip=1.1,
            kl_estimator="abs",
            advantage_estimator="reinforce_pp",
            scale_rewards="batch",
            kl_bias_correction=True,
            sft_coef=0.2,
            sft_decay_steps=5,
            **ADAPTIVE_ENTROPY,
        ),
        ("train/clip_ratio/dual", "train/entropy_coef", "train/sft/nll", "train/sft_coef"),
    ),
}


class SaveFinalWeights(L.Callback):
    """Saves, at the end of fit, each process's weights (:func:`flat_params`) and adaptive entropy state to
    ``$GRPO_TEST_WEIGHTS.rank<R>`` (``torch.save`` of ``{"params": ..., "entropy": ...}``), for runs on several
    processes through the command line."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = {"params": flat_params(pl_module), "entropy": pl_module.update.entropy.state_dict()}
        torch.save(state, f"{os.environ['GRPO_TEST_WEIGHTS']}.rank{trainer.global_rank}")


# ------------------------------------------------------------------------------------------- shared encoding
#: Prompts per batch and completions per prompt of the encoding tests.
B, G = 2, 4


def first_batch(data_kwargs) -> dict:
    """The B prompts of a one-step ``fit``'s training step."""
    data = ViVQAXDataModule(**data_kwargs, batch_size=B, shuffle=False)
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def reference_adapter(module: GRPOModule) -> VLMAdapter:
    """The unshared reference path of the module's adapter: pixels into every forward pass, G separate prefills."""
    return type(module.adapter)(module.adapter.processor, shared_encoding=False)


# ----------------------------------------------------------------------------------------- checkpoints and hub
def fit_with(
    module: L.LightningModule,
    save_dir: Path,
    steps: int,
    callbacks: list[L.Callback],
    *,
    name: str = "run",
    datamodule: L.LightningDataModule | None = None,
    ckpt_path: str | None = None,
) -> L.Trainer:
    """A CPU Trainer with AtomicCheckpointIO, a TensorBoard logger ``<save_dir>/<name>`` and the given callbacks."""
    L.seed_everything(0)
    trainer = quiet_trainer(
        max_steps=steps,
        logger=TensorBoardLogger(save_dir, name=name),
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_checkpointing=True,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return trainer


class ManualBoringModel(BoringModel):
    """Lightning's tiny regression model, optimised manually as GRPOModule is (this changes when Lightning saves)."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        loss = self.step(batch)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        return loss


def record_hub_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict]]:
    """Replace the two HfApi methods that push_to_hub uses by recorders, and make any network connection fail."""
    from huggingface_hub import HfApi

    calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", {"repo_id": repo_id, "token": self.token, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        files = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())
        calls.append(("upload_folder", {**kwargs, "files": files}))

    def no_network(*args, **kwargs):
        raise AssertionError(f"a test opened a network connection: {args}")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    return calls


_RUNS: dict[str, SimpleNamespace] = {}


def grpo_run(assets: Path, data_kwargs: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """One real GRPO fit of 3 steps on the tiny InternVL, shared by tests/test_checkpoints.py and tests/test_export.py.

    A checkpoint every 2 steps, the HF export at fit end and its push to the hub (recorded, no network).
    """
    key = str(assets)
    if key not in _RUNS:
        module = make_module(assets, loss=dict(beta=0.0))
        data = ViVQAXDataModule(**data_kwargs, batch_size=2, shuffle=False)
        export = HFExportCallback(push_to_hub=True, hub_model_id="someone/tiny-grpo")
        save_dir = tmp_path_factory.mktemp("grpo-run")
        with pytest.MonkeyPatch.context() as monkeypatch, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hub_calls = record_hub_calls(monkeypatch)
            trainer = fit_with(module, save_dir, 3, [StepCheckpoint(every_n_train_steps=2), export], datamodule=data)
        _RUNS[key] = SimpleNamespace(
            module=module,
            trainer=trainer,
            save_dir=save_dir,
            checkpoints=Path(trainer.logger.log_dir) / "checkpoints",
            export=export,
            hub_calls=hub_calls,
            warnings=[str(w.message) for w in caught],
        )
    return _RUNS[key]


# ------------------------------------------------------------------------------------------------ command line
def fit_args(assets: Path, tmp_path: Path, *extra: str) -> list[str]:
    """``fit`` of ``configs/demo.yaml`` for 4 short steps of the random model (rewarded by ``tag_count`` and ``format``)
    on the demo's training split, without validation, checkpoints, reference model or callbacks, logged under
    ``tmp_path / "logs"``; then ``extra``."""
    args = ["fit", "--config", str(ROOT / "configs" / "demo.yaml")]
    args += ["--model.model_name_or_path", str(grpo_demo.internvl_path(assets))]
    args += ["--data.train_file", str(grpo_demo.split_json_path(assets, "train"))]
    args += ["--data.train_image_dir", str(grpo_demo.image_dir(assets, "train")), "--data.val_file", "null"]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), "--trainer.max_steps", "4"]
    args += ["--model.sampling.num_generations", "2", "--model.sampling.max_completion_length", "4"]
    args += ["--data.batch_size", "2", "--model.rewards.funcs", "[tag_count, format]"]
    args += ["--model.rewards.weights", "null", "--model.rewards.kwargs", "null", "--model.loss.beta", "0"]
    args += ["--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false"]
    return [*args, *extra]


def recorded_training_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Replace ``GRPOModule.training_step`` by one that only records its batch index; the list it fills (empty when
    a run stops before its first step)."""
    steps: list[int] = []
    monkeypatch.setattr(GRPOModule, "training_step", lambda self, batch, batch_idx: steps.append(batch_idx))
    return steps


def demo_model_options(tmp_path: Path, capsys, model_options: dict[str, Any]) -> dict[str, Any]:
    """The ``model`` section that ``fit --config configs/demo.yaml --config <overlay> --print_config`` prints, the
    overlay setting ``model_options``; asserts the command line took them."""
    overlay = tmp_path / "model-options.yaml"
    overlay.write_text(yaml.safe_dump({"model": model_options}), encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(ROOT / "configs" / "demo.yaml"), "--config", str(overlay), "--print_config"])
    printed = capsys.readouterr()
    assert exit_info.value.code == 0, printed.err
    return yaml.safe_load(printed.out)["model"]


def run_cli(args: list[str], capsys) -> str:
    """The command line's error message; it must exit with status 2."""
    with pytest.raises(SystemExit) as exited:
        cli_main(args)
    assert exited.value.code == 2
    return capsys.readouterr().err


def fit_on_two_processes(
    assets,
    data_kwargs,
    tmp_path,
    *,
    reward: str,
    num_generations: int,
    max_steps: int,
    options: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    timeout: int = 600,
    status: int = 0,
) -> subprocess.CompletedProcess:
    """``fit --config configs/demo.yaml`` on 2 CPU processes (DDP over gloo) through the command line, on the demo's
    training split with batches of 4 prompts, ``reward`` alone, completions of at most 8 tokens, logs under
    ``tmp_path / "logs"``, then ``options``; asserts it exits with ``status``."""
    args = [sys.executable, "-m", "grpo_lightning", "fit", "--config", "configs/demo.yaml"]
    args += ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    args += ["--trainer.max_steps", str(max_steps), "--trainer.enable_progress_bar", "false"]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path / "logs")]
    args += ["--model.model_name_or_path", str(grpo_demo.internvl_path(assets))]
    args += ["--model.rewards.funcs", f"[{reward}]", "--model.rewards.weights", "null"]
    args += ["--model.rewards.kwargs", "null"]
    args += ["--model.sampling.num_generations", str(num_generations), "--model.sampling.max_completion_length", "8"]
    args += ["--data.batch_size", "4", "--data.val_file", "null"]
    for key, value in data_kwargs.items():
        if key.startswith("train"):
            args += [f"--data.{key}", value]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    result = subprocess.run([*args, *options], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == status, result.stderr[-4000:]
    return result


# -------------------------------------------------------------------------------- rewards named by dotted path
def rank_reward(completions, solution, id, **kwargs):  # noqa: A002 - `id` is the batch field's name
    """Reward = this process's rank; also records which prompts each rank saw, and checks they are whole groups.

    Reads ``$GRPO_TEST_G`` (the group size) and writes ``$GRPO_TEST_IDS.rank<R>`` (each step's prompt ids) and
    ``$GRPO_TEST_IDS.completions<R>`` (each step's completions)."""
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    group = int(os.environ["GRPO_TEST_G"])
    runs = [id[i : i + group] for i in range(0, len(id), group)]
    if any(len(set(run)) != 1 or len(run) != group for run in runs) or len({run[0] for run in runs}) != len(runs):
        raise AssertionError(f"rank {rank} got a split group: {id}")
    with open(f"{os.environ['GRPO_TEST_IDS']}.rank{rank}", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(sorted({run[0] for run in runs})) + "\n")
    with open(f"{os.environ['GRPO_TEST_IDS']}.completions{rank}", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(completions) + "\n")
    return [float(rank)] * len(completions)


#: The next run's :func:`characters_reward` raises ``error`` on its ``at_call``-th call (1-based; one call per
#: training step); set by :func:`arm`.
_FAULT: dict = {"at_call": None, "error": None, "calls": 0}


def characters_reward(completions, solution, **kwargs):
    """A dense reward (every completion scores differently), so that every step moves the weights."""
    _FAULT["calls"] += 1
    if _FAULT["calls"] == _FAULT["at_call"]:
        raise _FAULT["error"]
    return [len(text) / 50 for text in completions]


def arm(at_call: int | None, error: BaseException | None = None) -> None:
    """Make :func:`characters_reward` raise ``error`` on its ``at_call``-th call from now on (None: never)."""
    _FAULT.update(at_call=at_call, error=error, calls=0)


# ----------------------------------------------------------------------------------------------------- Chromium
#: Where the browser tests leave their screenshots.
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (`apt-get install -y chromium`; .ci/run installs it)"
)
#: Model output that would mark the page's body if the page ran it.
XSS_SCRIPT = "<script>document.body.setAttribute('data-pwned', 'script')</script>"
XSS_IMG = "\"'><img src=x onerror=\"document.body.setAttribute('data-pwned', 'img')\">"


def chromium(tmp_path: Path, url: str, *args: str) -> str:
    """Headless Chromium on ``url`` with ``args`` (``--dump-dom``, ``--screenshot=...``); its standard output."""
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--virtual-time-budget=5000",
        *args,
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


#: The test's own page around the page under test: a frame of the window's size, and a script that measures the
#: charts in it once it has loaded (the page's own Content Security Policy lets no other script run inside it).
_FRAME_PAGE = """<!DOCTYPE html><html><head><meta charset='utf-8'><style>body {{ margin: 0 }} iframe {{ border: 0;
display: block }}</style></head><body><iframe id='page' src='{url}' width='{width}' height='{height}'></iframe><script>
document.getElementById('page').addEventListener('load', function () {{
  var charts = this.contentDocument.querySelectorAll('svg.chart');
  var boxes = Array.prototype.map.call(charts, function (chart) {{
    var box = chart.getBoundingClientRect();
    return [box.left, box.top, box.width, box.height];
  }});
  document.body.setAttribute('data-chart-boxes', JSON.stringify(boxes));
}});
</script></body></html>"""


def screenshot_artifact(tmp_path: Path, url: str, name: str, size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """A screenshot of ``url`` in a ``size`` window, kept as ``test-artifacts/<name>``: that size, and not a blank
    page (thumbnails and colours are on it). Returns the boxes (left, top, width, height, in the screenshot's pixels)
    of the page's SVG charts (``svg.chart``) as Chromium laid them out, in document order.

    The page is shown in a frame of the window's size in a page of the test's own, whose script measures the charts;
    a frame may read a page of another file only with ``--allow-file-access-from-files``."""
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / name
    shot.unlink(missing_ok=True)
    frame = tmp_path / f"frame-{name}.html"
    frame.write_text(_FRAME_PAGE.format(url=html.escape(url), width=size[0], height=size[1]), encoding="utf-8")
    access = "--allow-file-access-from-files"
    dom = chromium(tmp_path, frame.as_uri(), access, "--dump-dom", f"--window-size={size[0]},{size[1]}")
    chromium(tmp_path, frame.as_uri(), access, f"--screenshot={shot}", f"--window-size={size[0]},{size[1]}")
    with Image.open(shot) as image:
        assert image.size == size
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50
    found = re.search(r'data-chart-boxes="([^"]*)"', dom)
    assert found, "the page did not load in the frame"
    return [tuple(round(v) for v in box) for box in json.loads(html.unescape(found.group(1)))]


def colour_pixels(image: Image.Image, box: tuple[int, int, int, int], colour: str, tolerance: int = 12) -> int:
    """How many pixels inside ``box`` (left, top, width, height) of ``image`` are ``colour`` (``#rrggbb``), give or
    take ``tolerance`` in each channel (antialiasing)."""
    left, top, width, height = box
    target = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
    region = image.convert("RGB").crop((left, top, left + width, top + height))
    return sum(
        count
        for count, pixel in region.getcolors(maxcolors=1 << 22)
        if all(abs(channel - want) <= tolerance for channel, want in zip(pixel, target, strict=True))
    )
