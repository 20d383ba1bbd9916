"""The memory budget of the InternVL3-1B recipe: one real GRPO step measured on the CPU, and the GPU peak it projects.

    python -m benchmarks.bench_memory_budget [--work-dir DIR] [--threads 2] [--micro-batch-size N] [--max-patches N]
    python -m benchmarks.bench_memory_budget --save measured.json    # then --report measured.json prints it again

Builds, offline, a random-weight InternVL with InternVL3-1B's shape (``grpo_demo.models.INTERNVL3_1B_SHAPE``: 802M
parameters, bf16), takes the first ``data.batch_size`` records of the real ViVQA-X validation split (``--records``,
default ``$VIVQAX_DIR/vivqax/ViVQA-X_val.json``, where ``VIVQAX_DIR`` is by default ``../shared/data`` beside the
repository: their questions, answers and explanations) through the product's data path (``ViVQAXDataModule``, its
prompt template), each with a synthetic 640x480 picture (COCO's usual size, which the recipe's ``max_patches: 6``
tiles as a 3x2 grid plus a thumbnail: 7 tiles, 1,792 image tokens), and runs one
``GRPOModule`` training step with the settings of ``configs/internvl.yaml`` (G, completion length, micro-batch,
gradient checkpointing, beta > 0 with its frozen reference copy, bf16-mixed) in a Lightning Trainer on the CPU.
Completions are sampled at exactly ``max_completion_length`` tokens (``min_completion_length`` = max). Two of the
recipe's settings cannot run here and are replaced: the ``explanation`` reward (its CLIP weights are a download; the
step scores with ``accuracy`` and ``format``, and CLIP's weights enter the projection as a counted part) and
DeepSpeed's CPU Adam on fp32 master weights (the step runs ``torch.optim.AdamW`` on the bf16 weights; the CPU memory
that ZeRO-2's offload takes is computed, per parameter, below).

What is measured (M) and what is computed (C):

* (M) weights of the policy and of the reference: bytes of their parameter tensors (tied weights counted once);
* (M) gradients: bytes of the ``.grad`` tensors after the step's last backward;
* (M) optimizer state of the CPU step's AdamW: bytes of its state tensors after the step;
* (M) each phase's transient peak: the growth of the process's resident set (``VmHWM``, reset through
  ``/proc/self/clear_refs`` after ``malloc_trim``) above its size when the phase began: sampling (image encoding,
  prefill, KV cache, logits), the reference pass, and each micro-batch of the update (forward with gradient
  checkpointing, chunked head, loss, backward). Large allocations are served by ``mmap`` (glibc's threshold set to
  128 KiB at start), so freed tensors leave the resident set at once and its growth follows the live tensor bytes;
  the resident set also counts the allocator's and the runtime's own pages, so these figures err upward;
* (M) the chunked head's own peak: ``head_logps`` forward and backward on one micro-batch of hidden states, alone,
  less the gradients it leaves;
* (C) the KV cache of sampling, the vision tower's and the language model's activations kept at the checkpoints, and
  DeepSpeed's buffers (bucket sizes from the installed Lightning's ``DeepSpeedStrategy`` defaults);
* (C, counted) the ``explanation`` reward's CLIP model (its architecture built on the meta device, fp32 as open_clip
  loads it; it runs on the GPU when there is one).

The projection for one GPU of N in bf16 with DeepSpeed ZeRO-2 and the optimizer offloaded is printed with its formula:
each phase's sum of parts, the peak the largest of them, plus an allowance for fragmentation and the CUDA context.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import dataclasses
import functools
import inspect
import itertools
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file, not with -m: import from the repository as -m does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import benchmarks  # noqa: F401  (sets the Hugging Face libraries offline before anything loads them)

from benchmarks.bench_logps_memory import reset_peak_rss, status_mib
from benchmarks.common import (
    REPO_ROOT,
    VIVQAX_DIR,
    format_table,
    git_head,
    load_average,
    package_version,
    peak_rss_mib,
    release_free_memory,
    work_directory,
)

RECIPE = REPO_ROOT / "configs" / "internvl.yaml"
RECORDS = VIVQAX_DIR / "vivqax" / "ViVQA-X_val.json"
#: A COCO picture's usual size: 4:3, which InternVL's tiling at max_patches 6 makes a 3x2 grid plus a thumbnail.
IMAGE_SIZE = (640, 480)
#: Rewards that run offline (the recipe's ``explanation`` needs CLIP weights from the hub).
OFFLINE_REWARDS = ("accuracy", "format")
#: The projection's allowance: the CUDA context, cuBLAS workspaces and NCCL (bytes), and the caching allocator's
#: fragmentation as a share of the peak phase's tensor bytes.
CUDA_CONTEXT_BYTES = 2**30
FRAGMENTATION = 0.10
#: The target: a 24 GB GPU with margin.
TARGET_BYTES = 16 * 10**9
GIB = 2**30
#: glibc's mallopt parameter number of the mmap threshold.
_M_MMAP_THRESHOLD = -3


# ------------------------------------------------------------------------------------------------ the recipe
@dataclass(frozen=True)
class Settings:
    """The recipe's settings that the memory depends on (``configs/internvl.yaml``, some overridden)."""

    num_prompts: int
    num_generations: int
    completion_length: int
    micro_batch_size: int
    beta: float
    gradient_checkpointing: bool
    freeze_vision_modules: bool
    lora_r: int
    dtype: str
    precision: str
    attn_implementation: str | None
    image: dict[str, Any]
    max_image_side: int | None
    lr: float
    loss: dict[str, Any]
    sampling: dict[str, Any]

    @property
    def num_sequences(self) -> int:
        return self.num_prompts * self.num_generations


def recipe_settings(path: Path = RECIPE, max_patches: int | None = None, **overrides: Any) -> Settings:
    """The memory-relevant settings of the recipe at ``path``; ``max_patches`` and ``overrides`` (Settings fields)
    that are not None replace the recipe's."""
    import yaml

    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    model, data = config["model"], config["data"]
    loss, sampling = dict(model.get("loss", {})), dict(model.get("sampling", {}))
    image = dict(model.get("image", {}))
    if max_patches is not None:
        image["max_patches"] = max_patches
    values = {
        "num_prompts": data.get("batch_size", 4),
        "num_generations": sampling.pop("num_generations", 8),
        "completion_length": sampling.pop("max_completion_length", 256),
        "micro_batch_size": loss.pop("micro_batch_size", 8),
        "beta": loss.pop("beta", 0.04),
        "gradient_checkpointing": model.get("gradient_checkpointing", False),
        "freeze_vision_modules": model.get("freeze_vision_modules", False),
        "lora_r": model.get("lora", {}).get("r", 0),
        "dtype": model.get("dtype", "float32"),
        "precision": str(config.get("trainer", {}).get("precision", "32-true")),
        "attn_implementation": model.get("attn_implementation"),
        "image": image,
        "max_image_side": data.get("max_image_side"),
        "lr": model.get("optimizer", {}).get("init_args", {}).get("lr", 1e-6),
        "loss": loss,
        "sampling": sampling,
    }
    values.update({name: value for name, value in overrides.items() if value is not None})
    return Settings(**values)


def deepspeed_defaults() -> dict[str, Any]:
    """The bucket settings of the installed Lightning's ``DeepSpeedStrategy`` (its constructor's defaults)."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    parameters = inspect.signature(DeepSpeedStrategy.__init__).parameters
    names = ("reduce_bucket_size", "allgather_bucket_size", "overlap_comm", "contiguous_gradients")
    return {name: parameters[name].default for name in names}


# ------------------------------------------------------------------------------------------------ inputs
def build_model(work_dir: Path, shape: dict[str, Any], max_patches: int, dtype: str) -> Path:
    """The random-weight checkpoint under ``work_dir`` (reused when built before with the same arguments)."""
    import grpo_demo

    arguments = {**shape, "max_patches": max_patches, "dtype": dtype}
    path, marker = work_dir / "model", work_dir / "model.json"
    if not (marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == arguments):
        grpo_demo.build_tiny_internvl(path, seed=0, **arguments)
        marker.write_text(json.dumps(arguments), encoding="utf-8")
    return path


def write_records(records_file: Path, count: int, work_dir: Path) -> tuple[Path, Path, list[str]]:
    """The first ``count`` records of a ViVQA-X split, as a ViVQA-X JSON file of their own, and a synthetic
    640x480 JPEG for each under the name the record gives; returns (data file, image folder, question ids)."""
    import numpy as np
    from PIL import Image

    if not records_file.is_file():
        raise FileNotFoundError(
            f"{records_file}: no ViVQA-X records there; give --records a ViVQA-X JSON file (a list of records)."
        )
    records = json.loads(records_file.read_text(encoding="utf-8"))
    if isinstance(records, dict):  # an older release: a dict keyed by question id
        records = [dict(value, question_id=key) for key, value in records.items()]
    chosen = records[:count]
    if len(chosen) < count:
        raise ValueError(f"{records_file} holds {len(records)} records; the step needs {count}.")
    image_dir = work_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for record in chosen:
        width, height = IMAGE_SIZE
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(image_dir / record["image_name"], quality=90)
    data_file = work_dir / "records.json"
    data_file.write_text(json.dumps(chosen, ensure_ascii=False), encoding="utf-8")
    return data_file, image_dir, [str(record.get("question_id", "")) for record in chosen]


# ------------------------------------------------------------------------------------------------ measuring
def serve_large_allocations_by_mmap(threshold: int = 128 * 1024) -> bool:
    """Have glibc serve allocations above ``threshold`` bytes by ``mmap``, so a freed tensor leaves the resident set
    at once (without it the threshold grows to 32 MiB, and freed blocks below it stay resident); False elsewhere."""
    try:
        return bool(ctypes.CDLL(ctypes.util.find_library("c")).mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError, TypeError):
        return False


def tensor_bytes(tensors) -> int:
    """Bytes of the given tensors' elements, each storage counted once (tied weights, views)."""
    seen, total = set(), 0
    for tensor in tensors:
        if tensor is None:
            continue
        key = tensor.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total


def unique_parameters(model) -> list:
    """The model's parameters, each storage once."""
    seen, out = set(), []
    for parameter in model.parameters():
        key = parameter.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            out.append(parameter)
    return out


class ResidentPeaks:
    """Transient peaks of the resident set: ``begin`` marks the start of a measurement, ``end`` returns the growth of
    the high-water mark above the resident size at its start (bytes). Measurements nest: resetting the high-water
    mark for an inner one first folds it into the outer ones."""

    def __init__(self) -> None:
        self.open: list[list[float]] = []  # [resident MiB at the start, highest MiB seen]

    def _fold(self) -> None:
        high = status_mib("VmHWM")
        for entry in self.open:
            entry[1] = max(entry[1], high)

    def begin(self) -> list[float]:
        self._fold()
        release_free_memory()
        resident = reset_peak_rss()
        entry = [resident, resident]
        self.open.append(entry)
        return entry

    def end(self, entry: list[float]) -> int:
        self._fold()
        self.open = [other for other in self.open if other is not entry]  # by identity: equal values may repeat
        return int((entry[1] - entry[0]) * 2**20)

    @contextlib.contextmanager
    def measure(self, into: dict[str, int], name: str) -> Iterator[None]:
        entry = self.begin()
        try:
            yield
        finally:
            into[name] = max(into.get(name, 0), self.end(entry))


@dataclass
class StepMemory:
    """What the measured step records."""

    phases: dict[str, int] = field(default_factory=dict)
    micro_batches: list[int] = field(default_factory=list)
    optimizer_step: int = 0
    gradient_bytes: int = 0
    optimizer_state_bytes: int = 0
    prompt_tokens: list[int] = field(default_factory=list)
    completion_tokens: list[int] = field(default_factory=list)
    image_tiles: list[int] = field(default_factory=list)


def measured_module_class():
    """``GRPOModule`` with memory measurements around its stages and micro-batches (the step itself unchanged)."""
    import torch

    from grpo_lightning.module import GRPOModule

    class MeasuredGRPOModule(GRPOModule):
        peaks: ResidentPeaks
        memory: StepMemory
        _micro_batch: list[float] | None = None

        @contextlib.contextmanager
        def timed(self, stage: str, seconds: dict[str, float]) -> Iterator[None]:
            with self.peaks.measure(self.memory.phases, stage), super().timed(stage, seconds):
                if stage == "update":
                    self._micro_batch = self.peaks.begin()
                try:
                    yield
                finally:
                    if stage == "update" and self._micro_batch is not None:
                        # what follows the last backward: clipping and the optimizer step (its state is made here)
                        self.memory.optimizer_step = self.peaks.end(self._micro_batch)
                        self._micro_batch = None
            # as it goes: a long run that is stopped early still tells what it measured
            print(f"  {stage}: transient peak {self.memory.phases[stage] / GIB:.3f} GiB", flush=True)

        def manual_backward(self, loss, *args: Any, **kwargs: Any) -> None:
            super().manual_backward(loss, *args, **kwargs)
            if self._micro_batch is not None:
                self.memory.micro_batches.append(self.peaks.end(self._micro_batch))
                print(f"  micro-batch peak {self.memory.micro_batches[-1] / GIB:.3f} GiB", flush=True)
                self.memory.gradient_bytes = tensor_bytes(p.grad for p in unique_parameters(self.model))
                self._micro_batch = self.peaks.begin()

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            generate = self.rollouts.generate

            def generate_and_count(batch, num_generations, do_sample):
                rollout = generate(batch, num_generations, do_sample)
                self.memory.prompt_tokens = rollout.prompts.attention_mask.sum(-1).tolist()
                self.memory.completion_tokens = rollout.completion_mask.sum(-1).tolist()
                self.memory.image_tiles = [v["pixel_values"].shape[0] for v in rollout.prompts.visual]
                return rollout

            self.rollouts.generate = generate_and_count

        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            super().on_train_batch_end(outputs, batch, batch_idx)
            optimizer = self.optimizers()
            optimizer = getattr(optimizer, "optimizer", optimizer)
            state = [t for values in optimizer.state.values() for t in values.values() if torch.is_tensor(t)]
            self.memory.optimizer_state_bytes = tensor_bytes(state)

    return MeasuredGRPOModule


def measure_head(model, adapter, micro_batch: int, length: int, peaks: ResidentPeaks) -> int:
    """The chunked language-model head's transient peak (bytes): ``head_logps`` on ``micro_batch`` x ``length`` hidden
    states, forward and backward, under bf16 autocast as the step runs it, less the gradients it leaves behind."""
    import torch

    from grpo_lightning.adapters.base import head_logps, output_head

    head = output_head(model)
    model.zero_grad(set_to_none=True)
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(micro_batch, length, head.in_features, generator=generator).to(head.weight.dtype)
    hidden.requires_grad_(True)
    tokens = torch.randint(head.out_features, (micro_batch, length), generator=generator)
    suppressed = torch.tensor(adapter.suppressed_token_ids(model))
    result: dict[str, int] = {}
    with peaks.measure(result, "head"), torch.autocast("cpu", dtype=torch.bfloat16):
        logps, _ = head_logps(head, hidden, tokens, suppressed, with_entropy=True)
        logps.sum().backward()
    left = tensor_bytes([head.weight.grad, hidden.grad])
    model.zero_grad(set_to_none=True)
    return max(result["head"] - left, 0)


def clip_reward_bytes() -> tuple[int, int]:
    """Parameters and fp32 bytes of the recipe's CLIP (``xlm-roberta-base-ViT-B-32``: open_clip's ViT-B/32 image
    tower and XLM-RoBERTa-base with an MLP projection), built on the meta device (nothing is downloaded)."""
    import torch
    from open_clip.model import CLIPVisionCfg, _build_vision_tower
    from transformers import XLMRobertaConfig, XLMRobertaModel

    config = json.loads(
        (
            Path(inspect.getfile(_build_vision_tower)).parent / "model_configs" / "xlm-roberta-base-ViT-B-32.json"
        ).read_text(encoding="utf-8")
    )
    embed_dim = config["embed_dim"]
    with torch.device("meta"):
        vision = _build_vision_tower(embed_dim, CLIPVisionCfg(**config["vision_cfg"]))
        # xlm-roberta-base's published config; open_clip's mean pooling leaves the model's own pooler out
        text_config = XLMRobertaConfig(
            vocab_size=250_002, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5
        )
        text = XLMRobertaModel(text_config, add_pooling_layer=False)
        hidden = text.config.hidden_size
        middle = (hidden + embed_dim) // 2  # open_clip's "mlp" projection of a HF text tower
        projection = torch.nn.Sequential(
            torch.nn.Linear(hidden, middle, bias=False), torch.nn.Linear(middle, embed_dim, bias=False)
        )
    count = sum(p.numel() for module in (vision, text, projection) for p in module.parameters()) + 1  # logit_scale
    return count, 4 * count


# ------------------------------------------------------------------------------------------------ the step
def prepare_inputs(
    args: argparse.Namespace, settings: Settings, shape: dict[str, Any], work_dir: Path
) -> tuple[Path, Path, Path, list[str]]:
    """The torch threads set, the model built and the records written: the model's folder, the data file, its image
    folder and the records' question ids."""
    import torch

    torch.set_num_threads(args.threads)
    model_path = build_model(work_dir, shape, settings.image.get("max_patches") or 1, settings.dtype)
    return (model_path, *write_records(Path(args.records), settings.num_prompts, work_dir))


def module_arguments(settings: Settings, model_path: Path) -> dict[str, Any]:
    """The ``GRPOModule`` arguments the step and the update probe share: the model as the recipe loads it, the
    offline rewards, the recipe's image resolution, and no completion or rollout logging."""
    from grpo_lightning.config import ImageConfig, LoggingConfig, RewardConfig

    return {
        "model_name_or_path": str(model_path),
        "dtype": settings.dtype,
        "attn_implementation": settings.attn_implementation,
        "gradient_checkpointing": settings.gradient_checkpointing,
        "freeze_vision_modules": settings.freeze_vision_modules,
        "rewards": RewardConfig(funcs=list(OFFLINE_REWARDS)),
        "image": ImageConfig(**settings.image),
        "logging": LoggingConfig(completions_every_n_steps=0, rollouts_every_n_steps=0),
    }


def own_memory(model: Any) -> None:
    """Give the model's weights and buffers memory of their own, not pages of the checkpoint file that a measured
    phase would fault in and count."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        tensor.data = tensor.data.clone()


def measured_module(settings: Settings, model_path: Path):
    """The step's ``MeasuredGRPOModule`` with the recipe's sampling, loss, LoRA and optimizer, its models configured
    and holding memory of their own."""
    import torch

    from grpo_lightning.config import LoRAConfig, LossConfig, SamplingConfig

    module = measured_module_class()(
        **module_arguments(settings, model_path),
        sampling=SamplingConfig(
            num_generations=settings.num_generations,
            max_completion_length=settings.completion_length,
            min_completion_length=settings.completion_length,
            **settings.sampling,
        ),
        loss=LossConfig(micro_batch_size=settings.micro_batch_size, beta=settings.beta, **settings.loss),
        lora=LoRAConfig(r=settings.lora_r),
        optimizer=functools.partial(torch.optim.AdamW, lr=settings.lr, weight_decay=0.0, foreach=False),
    )
    module.peaks, module.memory = ResidentPeaks(), StepMemory()
    module.configure_model()
    for model in (module.model, module.reference.model):
        if model is not None:
            own_memory(model)
    release_free_memory()
    return module


def fit_one_step(module: Any, settings: Settings, data_file: Path, image_dir: Path) -> float:
    """Seconds of one training step of ``module`` on the records (one batch of ``num_prompts``), in a CPU Trainer."""
    from benchmarks.common import quiet_trainer
    from grpo_lightning.data import ViVQAXDataModule

    data = ViVQAXDataModule(
        train_file=str(data_file),
        train_image_dir=str(image_dir),
        batch_size=settings.num_prompts,
        max_image_side=settings.max_image_side,
        shuffle=False,
    )
    trainer = quiet_trainer(
        accelerator="cpu", devices=1, precision=settings.precision, max_steps=1, num_sanity_val_steps=0
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    return time.perf_counter() - start


def parameter_figures(policy: list, reference: list) -> dict[str, int]:
    """Counts and bytes of the policy's parameters (all, trainable) and of the reference's."""
    trainable = [p for p in policy if p.requires_grad]
    return {
        "policy_parameters": sum(p.numel() for p in policy),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "trainable_tensors": len(trainable),
        "largest_trainable_parameter": max(p.numel() for p in trainable),
        "reference_parameters": sum(p.numel() for p in reference),
        "policy_bytes": tensor_bytes(policy),
        "reference_bytes": tensor_bytes(reference),
        "parameter_element_size": policy[0].element_size(),
    }


def architecture_figures(config: Any) -> dict[str, int]:
    """The model's dimensions that the computed parts use: language-model layers, width, KV heads and head size,
    vision layers and width, and vision tokens per tile (patches and the class token)."""
    text, vision = config.text_config, config.vision_config
    return {
        "lm_layers": text.num_hidden_layers,
        "lm_hidden": text.hidden_size,
        "kv_heads": text.num_key_value_heads,
        "head_dim": getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
        "vision_layers": vision.num_hidden_layers,
        "vision_hidden": vision.hidden_size,
        "vision_tokens_per_tile": (vision.image_size[0] // vision.patch_size[0]) ** 2 + 1
        if isinstance(vision.image_size, (list, tuple))
        else (vision.image_size // vision.patch_size) ** 2 + 1,
    }


def run_step(args: argparse.Namespace, settings: Settings, shape: dict[str, Any], work_dir: Path) -> dict[str, Any]:
    """One GRPO step of ``settings`` on the CPU; the measured figures."""
    model_path, data_file, image_dir, question_ids = prepare_inputs(args, settings, shape, work_dir)
    module = measured_module(settings, model_path)
    policy = unique_parameters(module.model)
    reference = unique_parameters(module.reference.model) if module.reference.model is not None else []
    step_seconds = fit_one_step(module, settings, data_file, image_dir)
    memory = module.memory
    head = measure_head(
        module.model, module.adapter, settings.micro_batch_size, settings.completion_length, module.peaks
    )
    return {
        "question_ids": question_ids,
        "step_seconds": step_seconds,
        **parameter_figures(policy, reference),
        "gradient_bytes": memory.gradient_bytes,
        "optimizer_state_bytes": memory.optimizer_state_bytes,
        "phases": memory.phases,
        "micro_batches": memory.micro_batches,
        "optimizer_step": memory.optimizer_step,
        "head": head,
        "prompt_tokens": memory.prompt_tokens,
        "completion_tokens": memory.completion_tokens,
        "image_tiles": memory.image_tiles,
        **architecture_figures(module.model.config),
        "peak_rss": int(peak_rss_mib() * 2**20),
    }


def probe_update(args: argparse.Namespace, settings: Settings, shape: dict[str, Any], work_dir: Path) -> dict[str, Any]:
    """The update's micro-batches alone, without sampling (``--update-only``: minutes where the whole step takes an
    hour on a shared 2-core CPU): ``--probe-micro-batches`` policy passes over completions of exactly
    ``completion_length`` random tokens of the records' prompts, in the step's order (prompt-major, G per prompt),
    each with a backward, through the adapter's ``completion_logps`` as the update runs it (gradient checkpointing,
    chunked head, bf16 autocast); a surrogate loss of the log-probs stands for the GRPO loss, whose (N, C) tensors
    are negligible beside the activations. No reference model and no optimizer step."""
    import torch

    from grpo_lightning.config import LossConfig
    from grpo_lightning.data import VQADataset, collate_samples, read_samples
    from grpo_lightning.module import GRPOModule

    model_path, data_file, image_dir, question_ids = prepare_inputs(args, settings, shape, work_dir)
    module = GRPOModule(**module_arguments(settings, model_path), loss=LossConfig(beta=0.0))
    module.configure_model()
    model, adapter = module.model.train(), module.adapter
    own_memory(model)
    samples, _ = read_samples(data_file)
    dataset = VQADataset(samples, image_dir, None, settings.max_image_side)
    batch = collate_samples([dataset[i] for i in range(len(dataset))])
    prompts = adapter.prepare_prompts(batch["image"], batch["prompt"])
    generator = torch.Generator().manual_seed(0)
    allowed = torch.ones(model.config.text_config.vocab_size, dtype=torch.bool)
    allowed[adapter.suppressed_token_ids(model) + adapter.eos_token_ids(model)] = False
    choices = allowed.nonzero()[:, 0]
    size, length = settings.micro_batch_size, settings.completion_length
    peaks, micro_batches = ResidentPeaks(), []
    for index in range(args.probe_micro_batches):
        prompt_index = [(index * size + j) // settings.num_generations % len(prompts) for j in range(size)]
        completion_ids = choices[torch.randint(len(choices), (size, length), generator=generator)]
        completion_mask = torch.ones_like(completion_ids)
        advantages = torch.randn(size, 1, generator=generator)
        entry = peaks.begin()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logps, _ = adapter.completion_logps(
                model, prompts, prompt_index, completion_ids, completion_mask, with_entropy=True
            )
            loss = -(logps * advantages).sum() / completion_mask.sum()
        loss.backward()
        micro_batches.append(peaks.end(entry))
        print(
            f"  micro-batch {index + 1} (prompt {prompt_index[0]}): peak {micro_batches[-1] / GIB:.3f} GiB", flush=True
        )
    policy = unique_parameters(model)
    return {
        "question_ids": question_ids,
        "image_tiles": [v["pixel_values"].shape[0] for v in prompts.visual],
        "prompt_tokens": prompts.attention_mask.sum(-1).tolist(),
        "micro_batches": micro_batches,
        "gradient_bytes": tensor_bytes(p.grad for p in policy),
        "policy_bytes": tensor_bytes(policy),
        "peak_rss": int(peak_rss_mib() * 2**20),
    }


# ------------------------------------------------------------------------------------------------ the projection
def computed_parts(measured: dict[str, Any], settings: Settings) -> dict[str, int]:
    """The parts computed from the shapes (bf16, 2 bytes an element)."""
    element = 2
    sequences = settings.num_sequences
    per_token_kv = measured["lm_layers"] * 2 * measured["kv_heads"] * measured["head_dim"] * element
    longest_prompt = max(measured["prompt_tokens"])
    tiles = max(measured["image_tiles"])
    prompts_per_micro_batch = -(-settings.micro_batch_size // settings.num_generations)
    return {
        # sampling: every sequence's prompt (copied from the shared prefill) and its completion, all layers
        "kv_cache": per_token_kv * sequences * (longest_prompt + settings.completion_length),
        # with gradient checkpointing each vision layer keeps its input (tiles x tokens x hidden) for the backward
        "vision_checkpoints": measured["vision_layers"]
        * prompts_per_micro_batch
        * tiles
        * measured["vision_tokens_per_tile"]
        * measured["vision_hidden"]
        * element,
        # each language-model layer keeps its input: the shared prefill and every sequence's continuation
        "lm_checkpoints": measured["lm_layers"]
        * measured["lm_hidden"]
        * element
        * (prompts_per_micro_batch * longest_prompt + settings.micro_batch_size * (settings.completion_length + 1)),
    }


def micro_batch_activations(measured: dict[str, Any]) -> int:
    """The update's activations peak: the largest micro-batch peak after the first (whose peak also holds the
    gradients it makes); with one micro-batch, its peak less the gradients."""
    later = measured["micro_batches"][1:]
    return max(later) if later else max(measured["micro_batches"][0] - measured["gradient_bytes"], 0)


def projection(measured: dict[str, Any], settings: Settings, clip_bytes: int, devices: int) -> dict[str, Any]:
    """The GPU's phases (sum of parts, bytes) and projected peak for one of ``devices`` GPUs."""
    ds = deepspeed_defaults()
    element = 2  # bf16
    buckets = (
        ds["reduce_bucket_size"] * element * (2 if ds["overlap_comm"] else 1) + ds["allgather_bucket_size"] * element
    )
    offload_buffer = measured["largest_trainable_parameter"] * element
    resident = {
        "policy weights": measured["policy_bytes"],
        "reference weights": measured["reference_bytes"],
        "CLIP reward model (fp32)": clip_bytes,
        "ZeRO offload gradient staging buffer": offload_buffer,
    }
    activations = micro_batch_activations(measured)
    phases = {
        "sampling": {**resident, "sampling transient (M)": measured["phases"].get("rollout", 0)},
        "reference": {**resident, "reference pass transient (M)": measured["phases"].get("reference", 0)},
        "update": {
            **resident,
            f"bf16 gradients / {devices}": measured["gradient_bytes"] // devices,
            "DeepSpeed reduce and allgather buckets": buckets,
            "micro-batch activations peak (M)": activations,
        },
    }
    sums = {name: sum(parts.values()) for name, parts in phases.items()}
    largest = max(sums, key=sums.get)
    peak = int(sums[largest] * (1 + FRAGMENTATION)) + CUDA_CONTEXT_BYTES
    return {"devices": devices, "phases": phases, "sums": sums, "largest": largest, "peak": peak, "buckets": ds}


def host_offload_bytes(trainable: int, micro_batches: int) -> dict[str, int]:
    """CPU memory of ZeRO-2's optimizer offload per trainable parameter (computed): fp32 master weights, Adam's two
    fp32 moments, the fp32 gradient partition, and bf16 accumulation buffers when a step has several backwards."""
    parts = {
        "fp32 master weights": 4 * trainable,
        "Adam exp_avg + exp_avg_sq (fp32)": 8 * trainable,
        "fp32 gradient partition": 4 * trainable,
    }
    if micro_batches > 1:
        parts["bf16 gradient accumulation buffers"] = 2 * trainable
    return parts


# ------------------------------------------------------------------------------------------------ the report
def gib(value: float) -> str:
    return f"{value / GIB:.2f}"


def settings_lines(measured: dict[str, Any], settings: Settings) -> list[str]:
    """The report's head: the step's settings, its prompts and its wall time."""
    return [
        f"settings: {settings.num_prompts} prompts x G {settings.num_generations} = {settings.num_sequences} "
        "sequences, "
        f"completions of {settings.completion_length} tokens (measured: {min(measured['completion_tokens'])}-"
        f"{max(measured['completion_tokens'])}), micro-batch {settings.micro_batch_size}, gradient checkpointing "
        f"{settings.gradient_checkpointing}, beta {settings.beta}, image {settings.image}, precision "
        f"{settings.precision}, weights {settings.dtype}",
        f"prompts: ViVQA-X question ids {', '.join(measured['question_ids'])}; image tiles "
        f"{measured['image_tiles']}; prompt tokens {measured['prompt_tokens']}",
        f"step wall time on the CPU: {measured['step_seconds']:.0f} s",
    ]


def accounting_rows(measured: dict[str, Any], settings: Settings, clip: tuple[int, int]) -> list[tuple[str, int, str]]:
    """The table's rows: (item, bytes, how), measured (M), computed (C) and counted."""
    element = measured["parameter_element_size"]
    rows = [
        (
            "policy weights (M)",
            measured["policy_bytes"],
            f"{measured['policy_parameters']:,} parameters x {element} B",
        ),
        (
            "reference weights (M)",
            measured["reference_bytes"],
            f"{measured['reference_parameters']:,} parameters x {element} B",
        ),
        (
            "gradients (M)",
            measured["gradient_bytes"],
            f"{measured['trainable_parameters']:,} trainable x {element} B",
        ),
        (
            "optimizer state of the CPU step's AdamW (M)",
            measured["optimizer_state_bytes"],
            f"{measured['optimizer_state_bytes'] / max(measured['trainable_parameters'], 1):.2f} B per trainable "
            "parameter (exp_avg, exp_avg_sq in bf16, step)",
        ),
        ("sampling transient peak (M)", measured["phases"].get("rollout", 0), "image encoding, prefill, KV cache"),
        ("reference pass transient peak (M)", measured["phases"].get("reference", 0), "no gradients"),
        (
            "update micro-batch activations peak (M)",
            micro_batch_activations(measured),
            "the largest after the first (which also makes the gradients); each: "
            + ", ".join(gib(v) for v in measured["micro_batches"])
            + " GiB",
        ),
        ("update: clipping + optimizer step (M)", measured["optimizer_step"], "AdamW's state is made here"),
        ("logits / chunked head peak (M)", measured["head"], "included in each micro-batch peak"),
    ]
    for name, value in computed_parts(measured, settings).items():
        rows.append((f"{name.replace('_', ' ')} (C)", value, "included in the measured phase peaks"))
    rows.append(("CLIP reward model, fp32 (counted)", clip[1], f"{clip[0]:,} parameters x 4 B"))
    rows.append(("process peak RSS on the CPU (M)", measured["peak_rss"], "weights, AdamW state, everything"))
    return rows


def formula_lines() -> list[str]:
    """How the GPU projection is made: the strategy's bucket defaults and the formula of each phase and the peak."""
    ds = deepspeed_defaults()
    return [
        "GPU projection: bf16 weights, DeepSpeed ZeRO-2, optimizer offloaded to the CPU; Lightning DeepSpeedStrategy "
        f"defaults reduce_bucket_size={ds['reduce_bucket_size']:,}, allgather_bucket_size="
        f"{ds['allgather_bucket_size']:,}, overlap_comm={ds['overlap_comm']}, contiguous_gradients="
        f"{ds['contiguous_gradients']}",
        "  formula: peak = max(sampling, reference, update) x (1 + fragmentation) + context, with fragmentation = "
        f"{FRAGMENTATION:.2f} and context = {gib(CUDA_CONTEXT_BYTES)} GiB (CUDA context, cuBLAS workspace, NCCL)",
        "    resident = policy + reference + CLIP + offload staging buffer (largest trainable tensor x 2 B)",
        "    sampling = resident + sampling transient",
        "    reference = resident + reference pass transient",
        "    update = resident + gradients / N + reduce_bucket_size x 2 B x (2 with overlap_comm) + "
        "allgather_bucket_size x 2 B + micro-batch activations (largest peak after the first micro-batch)",
        "    (upper bounds: ZeRO-2 with the optimizer offloaded copies each reduced bucket's gradients to the CPU, so "
        "fewer than all of them stay on the GPU; the allgather bucket is not allocated where all_gather_into_tensor "
        "exists, and one GPU gathers nothing)",
    ]


def projection_lines(result: dict[str, Any]) -> list[str]:
    """One GPU count's projection (a :func:`projection` result): each phase's parts and sum, and the peak."""
    devices = result["devices"]
    lines = [f"  N = {devices} GPU{'s' if devices > 1 else ''}:"]
    for phase, parts in result["phases"].items():
        terms = " + ".join(f"{name} {gib(value)}" for name, value in parts.items())
        lines.append(f"    {phase} = {terms} = {gib(result['sums'][phase])} GiB")
    verdict = "fits" if result["peak"] <= TARGET_BYTES else "does NOT fit"
    lines.append(
        f"    peak = {result['largest']} {gib(result['sums'][result['largest']])} x {1 + FRAGMENTATION:.2f} + "
        f"{gib(CUDA_CONTEXT_BYTES)} = {gib(result['peak'])} GiB = {result['peak'] / 1e9:.2f} GB "
        f"({verdict} the 16 GB target)"
    )
    return lines


def report(measured: dict[str, Any], settings: Settings, clip: tuple[int, int], device_counts: list[int]) -> list[str]:
    """The printed accounting."""
    rows = accounting_rows(measured, settings, clip)
    lines = [*settings_lines(measured, settings), ""]
    lines.append(format_table(("item", "bytes", "GiB", "how"), [(n, f"{v:,}", gib(v), h) for n, v, h in rows]))
    lines.append("")
    lines.extend(formula_lines())
    for devices in device_counts:
        lines.extend(projection_lines(projection(measured, settings, clip[1], devices)))
    host = host_offload_bytes(measured["trainable_parameters"], len(measured["micro_batches"]))
    terms = " + ".join(f"{name} {gib(value)}" for name, value in host.items())
    lines.append(f"CPU memory of the offloaded optimizer (C): {terms} = {gib(sum(host.values()))} GiB")
    for devices in device_counts:
        result = projection(measured, settings, clip[1], devices)
        lines.append(f"projected_peak_gib_{devices}={result['peak'] / GIB:.3f}")
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(RECIPE), help="the recipe whose settings run")
    parser.add_argument("--records", default=str(RECORDS), help="a ViVQA-X JSON file whose first records are used")
    parser.add_argument("--shape", choices=("internvl3-1b", "tiny"), default="internvl3-1b", help="tiny: for tests")
    parser.add_argument("--micro-batch-size", type=int, default=None, help="override the recipe's")
    parser.add_argument("--max-patches", type=int, default=None, help="override the recipe's image.max_patches")
    parser.add_argument("--completion-length", type=int, default=None, help="override the recipe's")
    parser.add_argument("--num-generations", type=int, default=None, help="override the recipe's G")
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 8], help="GPU counts to project for")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work-dir", default=None, help="keep the model here (default: a temp dir)")
    parser.add_argument("--save", default=None, help="also write the measured figures to this JSON file")
    parser.add_argument("--report", default=None, help="print the accounting of a --save file instead of measuring")
    parser.add_argument("--update-only", action="store_true", help="only the update's micro-batches (probe_update)")
    parser.add_argument("--probe-micro-batches", type=int, default=2, help="with --update-only: how many")
    args = parser.parse_args(argv)
    settings = recipe_settings(
        Path(args.recipe),
        micro_batch_size=args.micro_batch_size,
        max_patches=args.max_patches,
        completion_length=args.completion_length,
        num_generations=args.num_generations,
    )
    if args.shape == "tiny":
        shape: dict[str, Any] = {}  # build_tiny_internvl's defaults
    else:
        from grpo_demo.models import INTERNVL3_1B_SHAPE

        shape = {key: value for key, value in INTERNVL3_1B_SHAPE.items() if key != "max_patches"}
    if args.report is not None:
        saved = json.loads(Path(args.report).read_text(encoding="utf-8"))
        settings = Settings(**saved["settings"])
        clip = clip_reward_bytes()
        lines = report(saved["measured"], settings, clip, args.devices)
        print("\n".join(lines), flush=True)
        return {"measured": saved["measured"], "settings": settings, "clip": clip, "lines": lines}
    mmap_served = serve_large_allocations_by_mmap()
    with work_directory(args.work_dir, "bench_memory_budget-") as work_dir:
        print(
            f"torch {package_version('torch')}, transformers {package_version('transformers')}, lightning "
            f"{package_version('lightning')}, deepspeed {package_version('deepspeed')}; {args.threads} threads, load "
            f"{load_average()}; commit {git_head()}; model shape {args.shape}; large allocations by mmap: "
            f"{mmap_served}",
            flush=True,
        )
        if args.update_only:
            probed = probe_update(args, settings, shape, work_dir)
            print(json.dumps(probed), flush=True)
            if args.save is not None:
                Path(args.save).write_text(json.dumps(probed, indent=1), encoding="utf-8")
            return {"probed": probed, "settings": settings}
        measured = run_step(args, settings, shape, work_dir)
    clip = clip_reward_bytes()
    if args.save is not None:
        saved = {"settings": dataclasses.asdict(settings), "measured": measured}
        Path(args.save).write_text(json.dumps(saved, indent=1), encoding="utf-8")
    lines = report(measured, settings, clip, args.devices)
    print("\n".join(lines), flush=True)
    return {"measured": measured, "settings": settings, "clip": clip, "lines": lines}


if __name__ == "__main__":
    main()
