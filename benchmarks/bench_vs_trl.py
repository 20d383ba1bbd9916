"""Seconds per GRPO step and peak memory: our GRPOModule against TRL's GRPOTrainer, doing the same work.

    pip install -e '.[bench]'          # trl and what it needs; never a runtime dependency of grpo_lightning
    python benchmarks/bench_vs_trl.py [--rounds 2] [--steps 3] [--warmup 1] [--work-dir DIR] [--sweep]
    python benchmarks/bench_vs_trl.py --device cuda --dtype bfloat16 --model-shape internvl3-1b   # on a GPU

Builds, offline, one random-weight InternVL checkpoint (``CPU_MODEL_SHAPE``: real 448-pixel tiles of 14-pixel patches,
so 1,024 patches per tile through the vision tower and 256 image tokens per prompt, a Qwen2-shaped language model) and
a synthetic ViVQA-X dataset, then trains it with both trainers on the same prompts in the same order (no shuffling): B
prompts x G completions per optimizer step, every completion exactly L tokens (``min_new_tokens`` =
``max_new_tokens``), the same sampling settings, KL weight, loss, optimizer (AdamW, no weight decay, constant learning
rate), gradient clipping, fp32 and sdpa attention, gradient checkpointing off (``--gradient-checkpointing``: on in
both, non-reentrant), one generation and one optimizer step per batch (``num_iterations`` 1). ``mapping_table`` prints
which setting of ours is which of TRL's.

Each run is a fresh subprocess (so its peak RSS is that trainer's alone) with the same thread count and seed; runs
alternate ours / TRL over ``--rounds``. A step's time is the wall time between the ends of two consecutive optimizer
steps, taken by a callback in each trainer (so it holds everything the trainer does per step: data loading,
sampling, reward, reference and policy passes, backward, optimizer, logging); the time inside the step (ours:
``train/step_time``, TRL: ``on_step_begin`` to ``on_step_end``) is printed beside it. The first ``--warmup`` steps of
every run are left out, and medians are over the remaining steps of all rounds. Before timing anything, the prompt
token ids of both trainers' tokenization paths are compared, and after each run the tokens trained on are checked
step by step (``check_equal_work``): every completion of both is L tokens, and both counted the same prompt and
completion tokens; any difference stops the benchmark.

On a shared machine each run first waits (``--quiet-wait``) until other processes leave the CPUs nearly idle, and
the share of CPU time they took during each run is printed beside it; a warning line comes before the last line
when that share went above 10%.

The last line is ``ratio_step_time=<ours/trl> ratio_peak_rss=<ours/trl>``. ``--sweep`` also times both trainers as G
goes 2, 4, 8, 16 (length L) and as the completion length doubles 16, 32, 64, 128 (G as given), a run per point,
printed before that line.

TRL on a CPU: its fused log-prob head (``trl.kernels.chunked_logprob``) projects only the completion positions through
the LM head on CUDA (Triton), but every position, prompt included, elsewhere. That is what TRL costs here, and what
the default (``--trl-lm-head stock``) measures; ``--trl-lm-head completion-only`` makes TRL score only completion
positions on the CPU too (same log-probs, less work), for the comparison with TRL as lean as on a GPU.

On a GPU (``--device cuda``) both trainers run on the one visible device, in the given ``--dtype`` (``bfloat16``:
weights loaded in bf16 and bf16 autocast in both, torch AdamW on the bf16 weights in both: Lightning's
``bf16-mixed`` precision and TRL's ``bf16=True``), and ``--model-shape internvl3-1b`` builds the 802M-parameter
InternVL3-1B-shaped model of ``scripts/gpu_check.py``. The step clocks synchronize the device before reading the
time; each run's peak GPU memory (``torch.cuda.max_memory_allocated``) is printed beside its peak RSS, and the last
line gains ``ratio_peak_gpu_memory=<ours/trl>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The CPU benchmark's checkpoint (``--model-shape cpu``): random weights, InternVL3-1B's proportions shrunk to a 2-core
#: CPU (43.5M parameters, 11.3M of them in the vision tower). A 448-px tile of 14-px patches is 1,024 vision tokens and
#: 256 image tokens per prompt after the 0.5 pixel shuffle, as in InternVL3-1B, so the vision tower and the prefill cost
#: what they cost there: one tile through the vision tower costs about twice the language model's prefill of its prompt
#: (about three times in InternVL3-1B), and the LM head costs about 0.4 of the language model per token (as with
#: InternVL3-1B's 151,674-token vocabulary).
CPU_MODEL_SHAPE: dict[str, Any] = {
    "vocab_size": 1000,
    "pad_vocab_to": 16384,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_layers": 6,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "vision_hidden_size": 384,
    "vision_intermediate_size": 1536,
    "vision_num_layers": 6,
    "vision_num_heads": 6,
    "image_size": 448,
    "patch_size": 14,
    "downsample_ratio": 0.5,
    "max_patches": 1,
}

#: ``--model-shape`` choices: ``cpu`` (above) and ``internvl3-1b`` (``demo_assets.INTERNVL3_1B_SHAPE``, for a GPU).
MODEL_SHAPE_NAMES = ("cpu", "internvl3-1b")
DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "bfloat16")


def model_shape(name: str) -> dict[str, Any]:
    """``build_tiny_internvl`` arguments of the named shape (``MODEL_SHAPE_NAMES``)."""
    if name == "cpu":
        return dict(CPU_MODEL_SHAPE)
    if name == "internvl3-1b":
        from grpo_lightning.demo_assets import INTERNVL3_1B_SHAPE

        return dict(INTERNVL3_1B_SHAPE)
    raise ValueError(f"Unknown model shape {name!r}; choose one of {', '.join(MODEL_SHAPE_NAMES)}.")


RESULT_KEYS = ("ours", "trl")
#: How TRL's fused log-prob head runs (``--trl-lm-head``): as installed, or patched to score completion positions
#: only, as it does on CUDA (see the module docstring).
TRL_LM_HEADS = ("stock", "completion-only")
#: Our step's stages as GRPOModule times them (``train/time/<stage>``), printed as a breakdown of our step.
OURS_STAGES = ("rollout", "reward", "reference", "update")


@dataclass(frozen=True)
class BenchSettings:
    """What both trainers are set to: one optimizer step = ``prompts_per_step`` x ``num_generations`` completions of
    exactly ``completion_length`` tokens.

    Args:
        prompts_per_step: B, prompts per optimizer step.
        num_generations: G, completions per prompt.
        completion_length: L, tokens per completion (minimum = maximum).
        temperature: sampling temperature.
        top_p: nucleus sampling threshold.
        beta: KL weight (> 0: both keep a frozen reference model).
        learning_rate: AdamW learning rate, constant.
        loss_type: loss aggregation, a name both trainers know.
        scale_rewards: advantage scaling, ``group``, ``batch`` or ``none``.
        epsilon: clip range of the probability ratio.
        max_grad_norm: gradient clipping norm.
        micro_batch_size: sequences per forward/backward pass (None: all B x G at once); TRL gets it as its
            per-device batch with gradient accumulation over the one generation batch.
        attn_implementation: attention kernel of both.
        seed: seed of both.
        threads: torch threads of both.
        warmup_steps: steps left out of the medians, per run.
        measured_steps: steps measured per run.
        device: ``cpu`` or ``cuda`` (one device, both trainers).
        dtype: weights and autocast of both, ``float32`` or ``bfloat16``.
        model_shape: the checkpoint's shape, a name of ``MODEL_SHAPE_NAMES``.
        gradient_checkpointing: recompute activations in the backward pass, both trainers (non-reentrant).
    """

    prompts_per_step: int = 2
    num_generations: int = 4
    completion_length: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    beta: float = 0.04
    learning_rate: float = 1e-6
    loss_type: str = "grpo"
    scale_rewards: str = "group"
    epsilon: float = 0.2
    max_grad_norm: float = 1.0
    micro_batch_size: int | None = None
    attn_implementation: str = "sdpa"
    seed: int = 0
    threads: int = 2
    warmup_steps: int = 1
    measured_steps: int = 3
    device: str = "cpu"
    dtype: str = "float32"
    model_shape: str = "cpu"
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        for name, value, choices in (
            ("device", self.device, DEVICES),
            ("dtype", self.dtype, DTYPES),
            ("model_shape", self.model_shape, MODEL_SHAPE_NAMES),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}.")
        if self.num_generations < 2:
            raise ValueError("num_generations must be at least 2: GRPO compares completions within a group.")
        if min(self.prompts_per_step, self.completion_length, self.measured_steps, self.threads) < 1:
            raise ValueError("prompts_per_step, completion_length, measured_steps and threads must be at least 1.")
        if self.warmup_steps < 0:
            raise ValueError("warmup_steps must be 0 or more.")
        if self.sequences_per_step % self.micro_batch:
            raise ValueError(
                f"micro_batch_size ({self.micro_batch}) must divide B x G = {self.sequences_per_step}: TRL splits the "
                "generation batch into equal gradient-accumulation steps."
            )

    @property
    def sequences_per_step(self) -> int:
        return self.prompts_per_step * self.num_generations

    @property
    def micro_batch(self) -> int:
        return self.micro_batch_size or self.sequences_per_step

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.measured_steps

    @property
    def completion_tokens_per_step(self) -> int:
        return self.sequences_per_step * self.completion_length

    @property
    def bf16(self) -> bool:
        return self.dtype == "bfloat16"

    def adamw_kwargs(self) -> dict[str, Any]:
        """``torch.optim.AdamW`` arguments of both: torch's betas and eps, no weight decay."""
        return {"lr": self.learning_rate, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}


# ------------------------------------------------------------------------------------------------ settings mapping
def ours_module_kwargs(settings: BenchSettings, model_path: str) -> dict[str, Any]:
    """``GRPOModule`` arguments for these settings (the optimizer is ``AdamW(**settings.adamw_kwargs())``)."""
    s = settings
    return {
        "model_name_or_path": model_path,
        "reward_funcs": ["format"],
        "num_generations": s.num_generations,
        "max_completion_length": s.completion_length,
        "min_completion_length": s.completion_length,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": None,
        "beta": s.beta,
        "epsilon_low": s.epsilon,
        "epsilon_high": None,
        "num_iterations": 1,
        "scale_rewards": s.scale_rewards,
        "loss_type": s.loss_type,
        "micro_batch_size": s.micro_batch,
        "generation_batch_size": None,
        "lr_scheduler": None,
        "max_grad_norm": s.max_grad_norm,
        "dtype": s.dtype,
        "attn_implementation": s.attn_implementation,
        "gradient_checkpointing": s.gradient_checkpointing,
        "log_completions_every_n_steps": 0,
    }


def trl_config_kwargs(settings: BenchSettings, output_dir: str, suppress_token_ids: Sequence[int]) -> dict[str, Any]:
    """``trl.GRPOConfig`` arguments for the same work.

    TRL counts its batch in completions: the generation batch is B x G sequences, sampled once per optimizer step
    and split into ``per_device_train_batch_size``-sized gradient-accumulation steps. ``suppress_token_ids`` are the
    tokens our sampler never emits (image placeholders and other special tokens, EOS aside); TRL gets the same list
    (by default it suppresses only the image token), so both sample from the same distribution.
    """
    s = settings
    accumulation = s.sequences_per_step // s.micro_batch
    return {
        "output_dir": output_dir,
        "use_cpu": s.device == "cpu",
        "bf16": s.bf16,
        "fp16": False,
        "seed": s.seed,
        "data_seed": s.seed,
        "max_steps": s.total_steps,
        "per_device_train_batch_size": s.micro_batch,
        "gradient_accumulation_steps": accumulation,
        "generation_batch_size": s.sequences_per_step,
        "num_generations": s.num_generations,
        "num_iterations": 1,
        "shuffle_dataset": False,
        "max_completion_length": s.completion_length,
        "generation_kwargs": {"min_new_tokens": s.completion_length, "suppress_tokens": list(suppress_token_ids)},
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": 0,
        "beta": s.beta,
        "epsilon": s.epsilon,
        "loss_type": s.loss_type,
        "scale_rewards": s.scale_rewards,
        "learning_rate": s.learning_rate,
        "optim": "adamw_torch",
        "adam_beta1": 0.9,
        "adam_beta2": 0.999,
        "adam_epsilon": 1e-8,
        "weight_decay": 0.0,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "max_grad_norm": s.max_grad_norm,
        "gradient_checkpointing": s.gradient_checkpointing,
        "gradient_checkpointing_kwargs": {"use_reentrant": False} if s.gradient_checkpointing else None,
        "model_init_kwargs": {"dtype": s.dtype, "attn_implementation": s.attn_implementation},
        "use_vllm": False,
        "report_to": [],
        # One log per step, as ours logs every step: the per-step metrics are what check_equal_work reads.
        "logging_steps": 1,
        "log_completions": False,
        "save_strategy": "no",
        "eval_strategy": "no",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": False,
        "include_num_input_tokens_seen": "no",
    }


def ours_precision(settings: BenchSettings) -> str:
    """Lightning's precision for ours: bf16 autocast over the bf16 weights, as TRL's ``bf16=True`` does."""
    return "bf16-mixed" if settings.bf16 else "32-true"


def mapping_table(settings: BenchSettings, trl_lm_head: str = "stock") -> list[tuple[str, str, str]]:
    """(setting, ours, TRL) rows: how each setting reaches each trainer."""
    s = settings
    trl_head = {
        "stock": "stock: every position on a CPU (completion positions on CUDA)",
        "completion-only": "completion positions only (patched choice, as on CUDA)",
    }[trl_lm_head]
    n = s.sequences_per_step
    return [
        ("prompts x completions per step", f"data.batch_size={s.prompts_per_step}", f"generation_batch_size={n}"),
        ("G", f"num_generations={s.num_generations}", f"num_generations={s.num_generations}"),
        (
            "completion tokens (exact)",
            f"min/max_completion_length={s.completion_length}",
            f"max_completion_length={s.completion_length}, generation_kwargs.min_new_tokens={s.completion_length}",
        ),
        (
            "sequences per backward",
            f"micro_batch_size={s.micro_batch}",
            f"per_device_train_batch_size={s.micro_batch}, gradient_accumulation_steps={n // s.micro_batch}",
        ),
        ("sampling", f"temperature={s.temperature}, top_p={s.top_p}, top_k=None", "same, top_k=0 (off)"),
        ("suppressed tokens", "special tokens except EOS (adapter)", "generation_kwargs.suppress_tokens = same ids"),
        ("KL", f"beta={s.beta} (frozen reference copy)", f"beta={s.beta} (frozen reference copy)"),
        ("loss", f"loss_type={s.loss_type}, epsilon_low={s.epsilon}", f"loss_type={s.loss_type}, epsilon={s.epsilon}"),
        ("advantages", f"scale_rewards={s.scale_rewards}", f"scale_rewards={s.scale_rewards}"),
        (
            "optimizer",
            f"AdamW(lr={s.learning_rate:g}, wd=0), no scheduler",
            "optim=adamw_torch, wd=0, constant, warmup 0",
        ),
        ("grad clipping", f"max_grad_norm={s.max_grad_norm}", f"max_grad_norm={s.max_grad_norm}"),
        ("updates per rollout", "num_iterations=1", "num_iterations=1"),
        (
            "device, precision, attention",
            f"{s.device}, dtype={s.dtype}, precision={ours_precision(s)}, {s.attn_implementation}",
            f"use_cpu={s.device == 'cpu'}, dtype={s.dtype}, bf16={s.bf16}, fp16=False, {s.attn_implementation}",
        ),
        (
            "gradient checkpointing",
            "on (non-reentrant)" if s.gradient_checkpointing else "off",
            f"gradient_checkpointing={s.gradient_checkpointing}"
            + (", use_reentrant=False" if s.gradient_checkpointing else ""),
        ),
        ("reward", "format (grpo_lightning.rewards)", "the same function on the completion text"),
        ("data order", "shuffle=False", "shuffle_dataset=False"),
        ("logging", "every step (logger=False)", "logging_steps=1, report_to=[]"),
        ("log-prob head", "completion positions only", trl_head),
    ]


# ------------------------------------------------------------------------------------------------ results
class UnequalWorkError(RuntimeError):
    """The two trainers did not train on the same tokens: their timings would not be comparable."""


def check_equal_work(settings: BenchSettings, ours: dict[str, Any], trl: dict[str, Any]) -> None:
    """Fail loudly unless both runs generated exactly B x G x L completion tokens at every step and trained on the
    same number of prompt + completion tokens step by step (same prompts, same tokenization).

    ``ours["steps"]`` / ``trl["steps"]``: per step, ``completion_tokens`` (all completion tokens of the step),
    ``min_completion_length``, ``max_completion_length`` and ``trained_tokens`` (prompt + completion tokens of
    every sequence); None where a trainer did not report it.
    """
    expected = settings.completion_tokens_per_step
    length = settings.completion_length
    problems: list[str] = []
    for name, run in (("ours", ours), ("trl", trl)):
        steps = run["steps"]
        if len(steps) != settings.total_steps:
            problems.append(f"{name}: {len(steps)} steps recorded, {settings.total_steps} expected")
        for i, step in enumerate(steps):
            if step["completion_tokens"] != expected:
                problems.append(f"{name} step {i}: {step['completion_tokens']} completion tokens, expected {expected}")
            for key in ("min_completion_length", "max_completion_length"):
                if step.get(key) is not None and step[key] != length:
                    problems.append(f"{name} step {i}: {key} {step[key]}, expected {length}")
    for i, (a, b) in enumerate(zip(ours["steps"], trl["steps"], strict=False)):
        if a["trained_tokens"] != b["trained_tokens"]:
            problems.append(f"step {i}: ours trained on {a['trained_tokens']} tokens, trl on {b['trained_tokens']}")
    if problems:
        raise UnequalWorkError(
            "The trainers did not do the same work, so their timings are not comparable:\n  "
            + "\n  ".join(problems)
            + "\nCheck the settings mapping (python benchmarks/bench_vs_trl.py --help) and the TRL version."
        )


def step_times(run: dict[str, Any], skip: int, key: str = "wall_s") -> list[float]:
    """The measured steps' times of a run (the first ``skip`` steps are warm-up)."""
    return [step[key] for step in run["steps"][skip:]]


def summarize(runs: Sequence[dict[str, Any]], skip: int) -> dict[str, Any]:
    """Medians over every measured step of the given runs of one trainer, and the largest peak RSS (and peak GPU
    memory, None on a CPU) among them."""
    gpu = [run.get("peak_gpu_mib") for run in runs]
    return {
        "wall_s": statistics.median(t for run in runs for t in step_times(run, skip, "wall_s")),
        "in_step_s": statistics.median(t for run in runs for t in step_times(run, skip, "in_step_s")),
        "peak_rss_mib": max(run["peak_rss_mib"] for run in runs),
        "peak_gpu_mib": None if None in gpu else max(gpu),
        "steps": sum(len(step_times(run, skip)) for run in runs),
    }


def ratio_line(ours: dict[str, Any], trl: dict[str, Any]) -> str:
    """The machine-readable last line: ours / TRL for the median step time and the peak RSS, and for the peak GPU
    memory when both ran on a GPU."""
    line = (
        f"ratio_step_time={ours['wall_s'] / trl['wall_s']:.3f} "
        f"ratio_peak_rss={ours['peak_rss_mib'] / trl['peak_rss_mib']:.3f}"
    )
    if ours.get("peak_gpu_mib") is not None and trl.get("peak_gpu_mib") is not None:
        line += f" ratio_peak_gpu_memory={ours['peak_gpu_mib'] / trl['peak_gpu_mib']:.3f}"
    return line


#: Sequences per forward/backward pass at the sweep's larger points (both trainers), unless --micro-batch-size is
#: given: TRL's whole-batch pass over 32 sequences would take about 20 GiB here.
SWEEP_MICRO_BATCH = 8


def sweep_settings(settings: BenchSettings) -> list[tuple[str, BenchSettings]]:
    """The sweep's points, each once: G in 2, 4, 8, 16 at the given L, and L in 16, 32, 64, 128 at the given G, with
    at most ``SWEEP_MICRO_BATCH`` sequences per pass (or the given ``micro_batch_size``) in both trainers."""
    points: dict[tuple[int, int], tuple[str, dict[str, int]]] = {}
    for g in (2, 4, 8, 16):
        points.setdefault((g, settings.completion_length), ("G", {"num_generations": g}))
    for length in (16, 32, 64, 128):
        key = (settings.num_generations, length)
        points[key] = ("G, L", points[key][1]) if key in points else ("L", {"completion_length": length})
    out = []
    for axis, change in points.values():
        sequences = settings.prompts_per_step * change.get("num_generations", settings.num_generations)
        micro_batch = settings.micro_batch_size or min(sequences, SWEEP_MICRO_BATCH)
        out.append((axis, dataclasses.replace(settings, micro_batch_size=micro_batch, **change)))
    return out


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (also readable in a terminal)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def settings_from_json(data: dict[str, Any]) -> BenchSettings:
    return BenchSettings(**data)


def _peak_rss_mib() -> float:
    """This process's peak resident set size in MiB (``ru_maxrss`` is in KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _start_device(settings: BenchSettings) -> None:
    """Torch threads of the run and, on a GPU, a fresh peak-memory counter (stops when no GPU is visible)."""
    import torch

    torch.set_num_threads(settings.threads)
    if settings.device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda: no CUDA device is visible to this process.")
        torch.cuda.reset_peak_memory_stats()


def _clock(settings: BenchSettings) -> float:
    """The wall clock, after the GPU's queued work is done (``perf_counter`` alone would miss it)."""
    if settings.device == "cuda":
        import torch

        torch.cuda.synchronize()
    return time.perf_counter()


def _peak_gpu_mib(settings: BenchSettings) -> float | None:
    """The run's peak allocated GPU memory in MiB (None on a CPU)."""
    if settings.device != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**20


# ------------------------------------------------------------------------------------------------ the two workers
def run_ours(spec: dict[str, Any]) -> dict[str, Any]:
    """One GRPOModule fit of ``total_steps`` steps; per-step wall times, in-step times and token counts."""
    import functools

    import lightning as L
    import torch

    from grpo_lightning.data import ViVQAXDataModule
    from grpo_lightning.module import GRPOModule
    from grpo_lightning.profiling import StepRecorder

    s = settings_from_json(spec["settings"])
    _start_device(s)

    class StepClock(StepRecorder):
        """StepRecorder's per-step metrics plus the wall clock at the end of each step."""

        def __init__(self) -> None:
            super().__init__()
            self.ends: list[float] = []
            self.start = 0.0

        def on_train_start(self, trainer, pl_module) -> None:
            self.start = _clock(s)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            self.ends.append(_clock(s))

    clock = StepClock()
    module = GRPOModule(
        optimizer=functools.partial(torch.optim.AdamW, **s.adamw_kwargs()),
        **ours_module_kwargs(s, spec["model_path"]),
    )
    data = ViVQAXDataModule(
        train_file=spec["train_file"],
        train_image_dir=spec["train_image_dir"],
        batch_size=s.prompts_per_step,
        shuffle=False,
        num_workers=0,
        seed=s.seed,
    )
    L.seed_everything(s.seed, verbose=False)
    trainer = L.Trainer(
        accelerator="gpu" if s.device == "cuda" else "cpu",
        devices=1,
        precision=ours_precision(s),
        max_steps=s.total_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[clock],
    )
    trainer.fit(module, datamodule=data)
    peak, peak_gpu = _peak_rss_mib(), _peak_gpu_mib(s)
    previous = [clock.start, *clock.ends[:-1]]
    steps = [
        {
            "wall_s": end - before,
            "in_step_s": metrics["train/step_time"],
            "completion_tokens": round(metrics["train/tokens/completion"]),
            "trained_tokens": round(metrics["train/tokens/trained"]),
            "min_completion_length": None,  # implied: completion_tokens == B*G*L with every completion <= L
            "max_completion_length": None,
            "stages": {stage: metrics[f"train/time/{stage}"] for stage in OURS_STAGES},
        }
        for end, before, metrics in zip(clock.ends, previous, clock.steps, strict=True)
    ]
    parameters = sum(p.numel() for p in module.model.parameters())
    vision = sum(p.numel() for p in module.adapter.vision_tower(module.model).parameters())
    return {
        "steps": steps,
        "peak_rss_mib": peak,
        "peak_gpu_mib": peak_gpu,
        "parameters": parameters,
        "vision_parameters": vision,
    }


def _trl_format_reward(completions: list[Any], **kwargs: Any) -> list[float | None]:
    """Our ``format`` reward on TRL's conversational completions (a list of messages per completion)."""
    from grpo_lightning.rewards.format import format_reward

    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return format_reward(texts)


_trl_format_reward.__name__ = "format"  # TRL logs rewards under the function's name, as ours does


def run_trl(spec: dict[str, Any]) -> dict[str, Any]:
    """One TRL GRPOTrainer run of ``total_steps`` steps on the same data; the same per-step records as ours."""
    import datasets
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    s = settings_from_json(spec["settings"])
    _start_device(s)

    class StepClock(TrainerCallback):
        """Wall clock at the begin and end of each optimizer step, and TRL's per-step logs."""

        def __init__(self) -> None:
            self.begins: list[float] = []
            self.ends: list[float] = []
            self.logs: list[dict[str, float]] = []
            self.start = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = _clock(s)

        def on_step_begin(self, args, state, control, **kwargs):
            self.begins.append(_clock(s))

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(_clock(s))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                self.logs.append(dict(logs))

    if spec["trl_lm_head"] == "completion-only":
        # TRL scores only the completion positions when _use_triton says so (CUDA); answering yes here changes
        # that choice alone: the log-prob kernels keep their own check and run their torch code on the CPU.
        import trl.trainer.utils as trl_utils

        trl_utils._use_triton = lambda device: True
    clock = StepClock()
    dataset = datasets.load_from_disk(spec["trl_dataset"])
    config = GRPOConfig(**trl_config_kwargs(s, spec["output_dir"], spec["suppress_token_ids"]))
    trainer = GRPOTrainer(
        model=spec["model_path"],
        reward_funcs=[_trl_format_reward],
        args=config,
        train_dataset=dataset,
        callbacks=[clock],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    peak, peak_gpu = _peak_rss_mib(), _peak_gpu_mib(s)
    if len(clock.logs) != len(clock.ends):
        raise RuntimeError(f"TRL logged {len(clock.logs)} steps of {len(clock.ends)}: expected one log per step")
    previous = [clock.start, *clock.ends[:-1]]
    steps = []
    seen = 0
    for begin, end, before, logs in zip(clock.begins, clock.ends, previous, clock.logs, strict=True):
        seen, delta = logs["num_tokens"], logs["num_tokens"] - seen  # num_tokens: cumulative prompt + completion
        steps.append(
            {
                "wall_s": end - before,
                "in_step_s": end - begin,
                "completion_tokens": round(logs["completions/mean_length"] * s.sequences_per_step),
                "trained_tokens": round(delta),
                "min_completion_length": round(logs["completions/min_length"]),
                "max_completion_length": round(logs["completions/max_length"]),
            }
        )
    return {"steps": steps, "peak_rss_mib": peak, "peak_gpu_mib": peak_gpu}


def worker_main(kind: str, spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    result = run_ours(spec) if kind == "ours" else run_trl(spec)
    Path(out_path).write_text(json.dumps(result), encoding="utf-8")


# ------------------------------------------------------------------------------------------------ orchestration
def prepare_assets(work_dir: Path, settings: BenchSettings) -> dict[str, str]:
    """Build (or reuse, when built with the same shape, weights dtype and seed) the checkpoint of
    ``settings.model_shape`` and the dataset under ``work_dir``."""
    from grpo_lightning import demo_assets

    seed, shape = settings.seed, model_shape(settings.model_shape)
    marker = work_dir / f"bench_assets-{settings.model_shape}.json"
    meta = {"shape": shape, "dtype": settings.dtype, "seed": seed}
    paths = {
        "model_path": str(work_dir / "models" / f"bench-internvl-{settings.model_shape}"),
        "train_file": str(demo_assets.split_json_path(work_dir, "train")),
        "train_image_dir": str(demo_assets.image_dir(work_dir, "train")),
    }
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == meta:
        return paths
    marker.unlink(missing_ok=True)
    splits = demo_assets.write_dataset(demo_assets.data_dir(work_dir), seed=seed, num_train=64, num_val=4)
    corpus = demo_assets.default_corpus([r for split in splits.values() for r in split], seed=seed)
    demo_assets.build_tiny_internvl(paths["model_path"], seed=seed, corpus=corpus, dtype=settings.dtype, **shape)
    marker.write_text(json.dumps(meta), encoding="utf-8")
    return paths


def prepare_trl_inputs(paths: dict[str, str], work_dir: Path, settings: BenchSettings) -> dict[str, Any]:
    """TRL's view of the same data, the tokens our sampler suppresses, and a check that both trainers' prompt
    tokenization gives identical ids for the first prompts.

    The dataset rows are our data module's items in the same order: a conversational prompt holding our rendered
    prompt text (TRL puts the image placeholder before it, as our adapter does) and the PIL image.
    """
    import datasets
    import torch
    from transformers import AutoConfig, AutoProcessor, GenerationConfig
    from trl.data_utils import prepare_multimodal_messages

    from grpo_lightning.adapters import build_adapter
    from grpo_lightning.data import ViVQAXDataModule

    data = ViVQAXDataModule(
        train_file=paths["train_file"], train_image_dir=paths["train_image_dir"], batch_size=1, shuffle=False
    )
    data.setup("fit")
    items = [data.dataset("train")[i] for i in range(len(data.dataset("train")))]
    rows = {
        "prompt": [[{"role": "user", "content": item["prompt"]}] for item in items],
        "image": [item["image"] for item in items],
        "solution": [item["solution"] for item in items],
    }
    features = datasets.Features(
        {
            "prompt": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
            "image": datasets.Image(),
            "solution": datasets.Value("string"),
        }
    )
    dataset_dir = work_dir / "trl_dataset"
    datasets.disable_progress_bars()
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(dataset_dir))

    model_path = paths["model_path"]
    processor = AutoProcessor.from_pretrained(model_path)
    config = AutoConfig.from_pretrained(model_path)
    adapter = build_adapter(config.model_type, processor)
    # suppressed_token_ids reads only the model's two configs: no need to load the weights here
    configs = types.SimpleNamespace(config=config, generation_config=GenerationConfig.from_pretrained(model_path))
    suppress = adapter.suppressed_token_ids(configs)

    reloaded = datasets.load_from_disk(str(dataset_dir))
    prompt_lengths = []
    for i in range(settings.prompts_per_step):
        ours = adapter.prepare_prompts([items[i]["image"]], [items[i]["prompt"]]).input_ids[0]
        messages = prepare_multimodal_messages(reloaded[i]["prompt"], images=[reloaded[i]["image"]])
        theirs = processor.apply_chat_template(
            conversation=[messages], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"][0]
        if not torch.equal(ours, torch.as_tensor(theirs)):
            raise UnequalWorkError(
                f"Prompt {i} tokenizes differently: ours {len(ours)} tokens, TRL's path {len(theirs)} tokens. "
                "Both trainers must see the same prompt tokens; check the chat template and the dataset rows."
            )
        prompt_lengths.append(len(ours))
    return {"trl_dataset": str(dataset_dir), "suppress_token_ids": suppress, "prompt_lengths": prompt_lengths}


def run_worker(kind: str, spec: dict[str, Any], work_dir: Path, tag: str, quiet_wait: float) -> dict[str, Any]:
    """Run one trainer in a fresh Python process, once the machine is quiet (waiting at most ``quiet_wait`` s);
    returns its result dict with ``process_s`` and ``others_share`` (stops with the run's log on failure)."""
    spec_path = work_dir / f"spec-{tag}-{kind}.json"
    out_path = work_dir / f"result-{tag}-{kind}.json"
    log_path = work_dir / f"log-{tag}-{kind}.txt"
    spec = {**spec, "output_dir": str(work_dir / f"trl-output-{tag}")}
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    out_path.unlink(missing_ok=True)
    threads = str(spec["settings"]["threads"])
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "WANDB_DISABLED": "true",
    }
    command = [sys.executable, os.path.abspath(__file__), "--worker", kind, str(spec_path), str(out_path)]
    wait_for_quiet(quiet_wait)
    busy, ours_cpu, started = machine_busy_seconds(), own_cpu_seconds(), time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - started
    if code != 0 or not out_path.is_file():
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise RuntimeError(f"The {kind} run ({tag}) failed with exit code {code}; end of {log_path}:\n{tail}")
    result = json.loads(out_path.read_text(encoding="utf-8"))
    result["process_s"] = wall
    result["others_share"] = others_share(machine_busy_seconds() - busy, own_cpu_seconds() - ours_cpu, wall)
    return result


# ------------------------------------------------------------------------------------------------ a shared machine
# Other work on a shared box slows whichever trainer runs at that moment, and with both of them using every core,
# far more than in proportion (OpenMP threads wait on each other). So each run waits for a quiet machine first, and
# the share of the CPUs that other processes took during each run is measured and printed.


def machine_busy_seconds() -> float:
    """CPU-seconds the whole machine has been busy since boot, all cores, steal included (``/proc/stat``; 0 when
    unreadable)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    except (OSError, ValueError):
        return 0.0
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU-seconds of this process and its finished children (the trainer runs)."""
    import resource

    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def others_share(machine_busy: float, own: float, wall: float, cores: int | None = None) -> float:
    """The share of the machine's CPU time that other processes used over ``wall`` seconds, from the machine's busy
    CPU-seconds and ours over the same interval (0 when the machine's counters were unreadable)."""
    cores = cores or os.cpu_count() or 1
    if machine_busy <= 0 or wall <= 0:
        return 0.0
    return min(max(machine_busy - own, 0.0) / (wall * cores), 1.0)


def wait_for_quiet(max_wait: float, threshold: float = 0.15, sample: float = 2.0) -> None:
    """Wait (at most ``max_wait`` seconds) until other processes use less than ``threshold`` of the CPUs."""
    start = time.perf_counter()
    announced = False
    while True:
        busy, own = machine_busy_seconds(), own_cpu_seconds()
        time.sleep(sample)
        share = others_share(machine_busy_seconds() - busy, own_cpu_seconds() - own, sample)
        waited = time.perf_counter() - start
        if share < threshold:
            if announced:
                print(f"  (quiet after {waited:.0f} s)", flush=True)
            return
        if waited >= max_wait:
            print(
                f"  (machine still busy after {waited:.0f} s: others use {share:.0%} of the CPUs; going on)", flush=True
            )
            return
        if not announced:
            print(f"  (waiting for a quiet machine: others use {share:.0%} of the CPUs)", flush=True)
            announced = True


def compare(
    settings: BenchSettings, spec: dict[str, Any], work_dir: Path, rounds: int, tag: str, quiet_wait: float
) -> dict[str, dict[str, Any]]:
    """Alternate ours / TRL ``rounds`` times, check equal work after each round, and return each trainer's summary
    (ours with the median time of each of its stages and the model's parameter counts)."""
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key in RESULT_KEYS}
    spec = {**spec, "settings": dataclasses.asdict(settings)}
    for r in range(rounds):
        for kind in RESULT_KEYS:
            result = run_worker(kind, spec, work_dir, f"{tag}-r{r}", quiet_wait)
            runs[kind].append(result)
            times = " ".join(f"{t:.2f}" for t in step_times(result, 0))
            print(
                f"  round {r + 1}/{rounds} {kind:>4}: steps [{times}] s (first {settings.warmup_steps} warm-up), "
                f"peak RSS {result['peak_rss_mib']:.0f} MiB, process {result['process_s']:.0f} s, "
                f"other processes {result['others_share']:.0%} of the CPUs",
                flush=True,
            )
        check_equal_work(settings, runs["ours"][-1], runs["trl"][-1])
    summary = {kind: summarize(runs[kind], settings.warmup_steps) for kind in RESULT_KEYS}
    for kind in RESULT_KEYS:
        summary[kind]["others_share"] = max(run["others_share"] for run in runs[kind])
    measured = [step for run in runs["ours"] for step in run["steps"][settings.warmup_steps :]]
    summary["ours"]["stages"] = {
        stage: statistics.median(step["stages"][stage] for step in measured) for stage in OURS_STAGES
    }
    summary["ours"]["parameters"] = runs["ours"][0]["parameters"]
    summary["ours"]["vision_parameters"] = runs["ours"][0]["vision_parameters"]
    return summary


def run_sweep(settings: BenchSettings, spec: dict[str, Any], work_dir: Path, quiet_wait: float) -> str:
    """Both trainers at every sweep point (one round each); returns the table of median seconds per step."""
    print(f"\nsweep: one round per point, {settings.warmup_steps} warm-up + {settings.measured_steps} measured steps")
    rows = []
    for axis, point in sweep_settings(settings):
        g, length = point.num_generations, point.completion_length
        print(f"point G={g} L={length}", flush=True)
        summary = compare(point, spec, work_dir, 1, f"sweep-G{g}-L{length}", quiet_wait)
        o, t = summary["ours"], summary["trl"]
        ratio = o["wall_s"] / t["wall_s"]
        memory = [f"{o['peak_rss_mib']:.0f}", f"{t['peak_rss_mib']:.0f}"]
        if settings.device == "cuda":
            memory += [f"{o['peak_gpu_mib']:.0f}", f"{t['peak_gpu_mib']:.0f}"]
        row = (axis, g, length, point.micro_batch, f"{o['wall_s']:.2f}", f"{t['wall_s']:.2f}", f"{ratio:.3f}", *memory)
        rows.append(row)
    headers = ("varied", "G", "L", "per pass", "ours s/step", "TRL s/step", "ours/TRL", "ours RSS MiB", "TRL RSS MiB")
    if settings.device == "cuda":
        headers += ("ours GPU MiB", "TRL GPU MiB")
    return format_table(headers, rows)


def describe(settings: BenchSettings, paths: dict[str, str], spec: dict[str, Any], rounds: int) -> str:
    """The header: machine, versions, model shape, the work of one step, and the settings mapping."""
    s, m = settings, model_shape(settings.model_shape)
    versions = ", ".join(f"{name} {_version(name)}" for name in ("torch", "transformers", "trl", "lightning"))
    return "\n".join(
        [
            f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; {versions}",
            f"device: {_device_name(s)}; weights and autocast {s.dtype}",
            f"grpo_lightning at git {_git_head()}; {s.threads} torch threads in each run; load average {_load()}",
            f"model: random-weight InternVL ({s.model_shape} shape) at {paths['model_path']}: "
            f"{m['image_size']}-px tiles of {m['patch_size']}-px patches, vision {m['vision_num_layers']} layers x "
            f"{m['vision_hidden_size']}, "
            f"language {m['num_layers']} layers x {m['hidden_size']} (MLP {m['intermediate_size']}, "
            f"{m['num_attention_heads']} heads / {m['num_key_value_heads']} KV heads), vocabulary {m['pad_vocab_to']}",
            f"work: B={s.prompts_per_step} prompts x G={s.num_generations} completions x L={s.completion_length} "
            f"tokens per step ({s.completion_tokens_per_step} completion tokens), prompts of "
            f"{', '.join(map(str, spec['prompt_lengths']))} tokens (identical ids in both), beta {s.beta}, "
            f"lr {s.learning_rate:g}, loss {s.loss_type}; {s.warmup_steps} warm-up + {s.measured_steps} measured "
            f"steps per run, {rounds} rounds",
            format_table(("setting", "ours (GRPOModule)", "TRL (GRPOConfig)"), mapping_table(s, spec["trl_lm_head"])),
        ]
    )


def report(settings: BenchSettings, summary: dict[str, dict[str, Any]], elapsed: float) -> str:
    """The result table, our stage breakdown and, last, the ratio line."""
    o, t = summary["ours"], summary["trl"]
    gpu = o.get("peak_gpu_mib") is not None
    rows = [
        (
            name,
            f"{r['wall_s']:.3f}",
            f"{r['in_step_s']:.3f}",
            f"{r['peak_rss_mib']:.0f}",
            *([f"{r['peak_gpu_mib']:.0f}"] if gpu else []),
        )
        for name, r in (("ours (grpo_lightning)", o), (f"TRL {_version('trl')}", t))
    ]
    headers = ("trainer", "s/step", "s in step", "peak RSS MiB", *(["peak GPU MiB"] if gpu else []))
    stages = ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in o["stages"].items())
    return "\n".join(
        [
            f"\nmodel parameters: {o['parameters']:,} ({o['vision_parameters']:,} in the vision tower); equal work "
            f"checked: every completion {settings.completion_length} tokens, the same prompt + completion tokens "
            "per step in both",
            f"result: medians over {o['steps']} measured steps per trainer (whole run {elapsed:.0f} s, load average "
            f"{_load()} at the end)",
            format_table(headers, rows),
            f"ours, median seconds per stage: {stages}",
            *busy_warning(max(o["others_share"], t["others_share"])),
            ratio_line(o, t),
        ]
    )


def busy_warning(share: float, tolerated: float = 0.10) -> list[str]:
    """A warning line when other processes took more than ``tolerated`` of the CPUs during some run."""
    if share <= tolerated:
        return []
    return [
        f"warning: other processes used up to {share:.0%} of the CPUs during a run; its steps are slower than the "
        "trainer alone: rerun on a quiet machine before trusting the ratios"
    ]


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "missing"


def _device_name(settings: BenchSettings) -> str:
    """The GPU's name and memory, or ``CPU``."""
    if settings.device != "cuda":
        return "CPU"
    import torch

    props = torch.cuda.get_device_properties(0)
    return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, CUDA {torch.version.cuda}"


def _load() -> str:
    """The 1-minute load average: other work on the machine slows both trainers (rounds alternate to share it)."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def _git_head() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "grpo_lightning"], cwd=root, capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    changed = " + uncommitted changes in grpo_lightning/" if dirty.stdout.strip() else ""
    return (head.stdout.strip() or "unknown") + changed


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = BenchSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts-per-step", type=int, default=defaults.prompts_per_step, help="B")
    parser.add_argument("--num-generations", type=int, default=defaults.num_generations, help="G")
    parser.add_argument("--completion-length", type=int, default=defaults.completion_length, help="L (exact)")
    parser.add_argument("--micro-batch-size", type=int, default=None, help="sequences per backward (default: B x G)")
    parser.add_argument("--beta", type=float, default=defaults.beta)
    parser.add_argument("--loss-type", default=defaults.loss_type, choices=("grpo", "bnpo", "dr_grpo", "dapo"))
    parser.add_argument("--rounds", type=int, default=2, help="ours/TRL alternations")
    parser.add_argument("--steps", type=int, default=None, help="measured steps per run (default 3; sweep points 2)")
    parser.add_argument("--warmup", type=int, default=defaults.warmup_steps, help="warm-up steps per run")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of both")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", choices=DEVICES, default=defaults.device, help="where both trainers run")
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="weights and autocast of both (default: float32 on a CPU, bfloat16 on a GPU)",
    )
    parser.add_argument(
        "--gradient-checkpointing", action="store_true", help="both trainers recompute activations (as the recipe)"
    )
    parser.add_argument(
        "--model-shape",
        choices=MODEL_SHAPE_NAMES,
        default=None,
        help="cpu: the 43.5M-parameter model for a 2-core CPU; internvl3-1b: the 802M-parameter InternVL3-1B shape "
        "of scripts/gpu_check.py (default: cpu on a CPU, internvl3-1b on a GPU)",
    )
    parser.add_argument(
        "--trl-lm-head",
        choices=TRL_LM_HEADS,
        default="stock",
        help="stock: TRL as installed (on a CPU its log-prob head projects every position, prompt included); "
        "completion-only: only the completion positions, as TRL does on CUDA",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=120.0, help="before each run, wait up to this many s for a quiet machine"
    )
    parser.add_argument("--work-dir", default=None, help="keep the model, data and logs here (default: a temp dir)")
    parser.add_argument("--sweep", action="store_true", help="also time G = 2..16 and L = 16..128, before the result")
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "SPEC", "OUT"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(*args.worker)
        return
    settings = BenchSettings(
        prompts_per_step=args.prompts_per_step,
        num_generations=args.num_generations,
        completion_length=args.completion_length,
        micro_batch_size=args.micro_batch_size,
        beta=args.beta,
        loss_type=args.loss_type,
        seed=args.seed,
        threads=args.threads,
        warmup_steps=args.warmup,
        measured_steps=args.steps or 3,
        device=args.device,
        dtype=args.dtype or ("bfloat16" if args.device == "cuda" else "float32"),
        model_shape=args.model_shape or ("internvl3-1b" if args.device == "cuda" else "cpu"),
        gradient_checkpointing=args.gradient_checkpointing,
    )
    if settings.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit("--device cuda: no CUDA device is visible here; run on a GPU machine or leave --device out.")
    if _version("trl") == "missing":
        sys.exit("trl is not installed: pip install -e '.[bench]' (the bench extra), then run this again.")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_vs_trl-") as tmp:
        work_dir = Path(args.work_dir or tmp).resolve()
        work_dir.mkdir(parents=True, exist_ok=True)
        paths = prepare_assets(work_dir, settings)
        spec = {**paths, **prepare_trl_inputs(paths, work_dir, settings), "trl_lm_head": args.trl_lm_head}
        print(describe(settings, paths, spec, args.rounds), flush=True)
        sweep = None
        if args.sweep:
            point_settings = dataclasses.replace(settings, measured_steps=args.steps or 2)
            sweep = run_sweep(point_settings, spec, work_dir, args.quiet_wait)
        print("\nmain comparison", flush=True)
        summary = compare(settings, spec, work_dir, args.rounds, "main", args.quiet_wait)
    if sweep:
        print("\nsweep: median seconds per step (wall time between step ends) and peak RSS, one run each")
        print(sweep)
    print(report(settings, summary, time.perf_counter() - started))


if __name__ == "__main__":
    main()
