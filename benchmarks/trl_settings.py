"""The settings both trainers of ``benchmarks.bench_vs_trl`` get, and how each reaches each: our ``GRPOModule``
arguments, TRL's ``GRPOConfig`` arguments, the table that maps one onto the other, and the sweep's points."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: ``--model-shape`` choices: ``cpu`` and ``internvl3-1b`` (``grpo_demo.models.CPU_MODEL_SHAPE`` and
#: ``INTERNVL3_1B_SHAPE``, the latter for a GPU).
MODEL_SHAPE_NAMES = ("cpu", "internvl3-1b")
DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "bfloat16")
#: How TRL's fused log-prob head runs (``--trl-lm-head``): patched to score completion positions only, as it does on
#: CUDA (the default), or as installed (see ``benchmarks.bench_vs_trl``'s docstring).
TRL_LM_HEADS = ("completion-only", "stock")


def model_shape(name: str) -> dict[str, Any]:
    """``build_tiny_internvl`` arguments of the named shape (``MODEL_SHAPE_NAMES``), from ``grpo_demo.models``."""
    from grpo_demo.models import CPU_MODEL_SHAPE, INTERNVL3_1B_SHAPE  # the builders load torch: not at import time

    shapes = {"cpu": CPU_MODEL_SHAPE, "internvl3-1b": INTERNVL3_1B_SHAPE}
    if name not in shapes:
        raise ValueError(f"Unknown model shape {name!r}; choose one of {', '.join(MODEL_SHAPE_NAMES)}.")
    return dict(shapes[name])


@dataclass(frozen=True)
class BenchSettings:
    """What both trainers are set to: one optimizer step = ``prompts_per_step`` x ``num_generations`` completions of
    exactly ``completion_length`` tokens; each trainer runs ``warmup_steps``, then ``rounds`` blocks of
    ``measured_steps`` steps, in one process.

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
        warmup_steps: steps left out of the statistics, once per trainer process before the first round.
        measured_steps: steps measured per trainer and round.
        rounds: rounds; each runs every trainer's block of ``measured_steps`` once, in a shuffled order.
        device: ``cpu`` or ``cuda`` (one device, both trainers).
        dtype: weights and autocast of both, ``float32`` or ``bfloat16``.
        model_shape: the checkpoint's shape, a name of ``MODEL_SHAPE_NAMES``.
        gradient_checkpointing: recompute activations in the backward pass, both trainers (non-reentrant).
    """

    prompts_per_step: int = 2
    num_generations: int = 8
    completion_length: int = 128
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
    rounds: int = 3
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
        if min(self.prompts_per_step, self.completion_length, self.measured_steps, self.rounds, self.threads) < 1:
            raise ValueError(
                "prompts_per_step, completion_length, measured_steps, rounds and threads must be at least 1."
            )
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
        """Optimizer steps of each trainer's one run: its warm-up, then every round's measured block."""
        return self.warmup_steps + self.rounds * self.measured_steps

    @property
    def completion_tokens_per_step(self) -> int:
        return self.sequences_per_step * self.completion_length

    @property
    def bf16(self) -> bool:
        return self.dtype == "bfloat16"

    def adamw_kwargs(self) -> dict[str, Any]:
        """``torch.optim.AdamW`` arguments of both: torch's betas and eps, no weight decay."""
        return {"lr": self.learning_rate, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}


def ours_module_kwargs(settings: BenchSettings, model_path: str) -> dict[str, Any]:
    """``GRPOModule`` arguments for these settings (the optimizer is ``AdamW(**settings.adamw_kwargs())``)."""
    from grpo_lightning.config import LoggingConfig, LossConfig, RewardConfig, SamplingConfig

    s = settings
    return {
        "model_name_or_path": model_path,
        "dtype": s.dtype,
        "attn_implementation": s.attn_implementation,
        "gradient_checkpointing": s.gradient_checkpointing,
        "rewards": RewardConfig(funcs=["format"]),
        "sampling": SamplingConfig(
            num_generations=s.num_generations,
            max_completion_length=s.completion_length,
            min_completion_length=s.completion_length,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=None,
            generation_batch_size=None,
        ),
        "loss": LossConfig(
            beta=s.beta,
            epsilon_low=s.epsilon,
            epsilon_high=None,
            num_iterations=1,
            scale_rewards=s.scale_rewards,
            loss_type=s.loss_type,
            micro_batch_size=s.micro_batch,
            max_grad_norm=s.max_grad_norm,
        ),
        "logging": LoggingConfig(completions_every_n_steps=0),
        "lr_scheduler": None,
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


def mapping_table(settings: BenchSettings, trl_lm_head: str = "completion-only") -> list[tuple[str, str, str]]:
    """(setting, ours, TRL) rows: how each setting reaches each trainer."""
    s = settings
    trl_head = {
        "stock": "stock: every position on a CPU (completion positions on CUDA)",
        "completion-only": "completion positions only (patched choice, as on CUDA)",
    }[trl_lm_head]
    n = s.sequences_per_step
    return [
        ("prompts x completions per step", f"data.batch_size={s.prompts_per_step}", f"generation_batch_size={n}"),
        ("G", f"sampling.num_generations={s.num_generations}", f"num_generations={s.num_generations}"),
        (
            "completion tokens (exact)",
            f"sampling.min/max_completion_length={s.completion_length}",
            f"max_completion_length={s.completion_length}, generation_kwargs.min_new_tokens={s.completion_length}",
        ),
        (
            "sequences per backward",
            f"loss.micro_batch_size={s.micro_batch}",
            f"per_device_train_batch_size={s.micro_batch}, gradient_accumulation_steps={n // s.micro_batch}",
        ),
        ("sampling", f"sampling: temperature={s.temperature}, top_p={s.top_p}, top_k=None", "same, top_k=0 (off)"),
        ("suppressed tokens", "special tokens except EOS (adapter)", "generation_kwargs.suppress_tokens = same ids"),
        ("KL", f"loss.beta={s.beta} (frozen reference copy)", f"beta={s.beta} (frozen reference copy)"),
        (
            "loss",
            f"loss: loss_type={s.loss_type}, epsilon_low={s.epsilon}",
            f"loss_type={s.loss_type}, epsilon={s.epsilon}",
        ),
        ("advantages", f"loss.scale_rewards={s.scale_rewards}", f"scale_rewards={s.scale_rewards}"),
        (
            "optimizer",
            f"AdamW(lr={s.learning_rate:g}, wd=0), no scheduler",
            "optim=adamw_torch, wd=0, constant, warmup 0",
        ),
        ("grad clipping", f"loss.max_grad_norm={s.max_grad_norm}", f"max_grad_norm={s.max_grad_norm}"),
        ("updates per rollout", "loss.num_iterations=1", "num_iterations=1"),
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
        ("reward", "rewards.funcs=[format] (grpo_lightning.rewards)", "the same function on the completion text"),
        ("data order", "shuffle=False", "shuffle_dataset=False"),
        ("logging", "every step (logger=False)", "logging_steps=1, report_to=[]"),
        ("log-prob head", "completion positions only", trl_head),
    ]


#: Sequences per forward/backward pass at the sweep's larger points (both trainers), unless --micro-batch-size is
#: given: TRL's whole-batch pass over 32 sequences would take about 20 GiB here.
SWEEP_MICRO_BATCH = 8
#: The sweep's values of G (at the given L) and of L (at the given G).
SWEEP_GENERATIONS = (2, 4, 8, 16)
SWEEP_LENGTHS = (32, 128, 256)


def sweep_settings(settings: BenchSettings) -> list[tuple[str, BenchSettings]]:
    """The sweep's points, each once: G in ``SWEEP_GENERATIONS`` at the given L, and L in ``SWEEP_LENGTHS`` at the
    given G, with at most ``SWEEP_MICRO_BATCH`` sequences per pass (or the given ``micro_batch_size``) in both
    trainers."""
    points: dict[tuple[int, int], tuple[str, dict[str, int]]] = {}
    for g in SWEEP_GENERATIONS:
        points.setdefault((g, settings.completion_length), ("G", {"num_generations": g}))
    for length in SWEEP_LENGTHS:
        key = (settings.num_generations, length)
        points[key] = ("G, L", points[key][1]) if key in points else ("L", {"completion_length": length})
    out = []
    for axis, change in points.values():
        sequences = settings.prompts_per_step * change.get("num_generations", settings.num_generations)
        micro_batch = settings.micro_batch_size or min(sequences, SWEEP_MICRO_BATCH)
        out.append((axis, dataclasses.replace(settings, micro_batch_size=micro_batch, **change)))
    return out


def settings_from_json(data: dict[str, Any]) -> BenchSettings:
    return BenchSettings(**data)
