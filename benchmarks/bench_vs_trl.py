"""Seconds per GRPO step and peak memory: our GRPOModule against TRL's GRPOTrainer, doing the same work.

    pip install -e '.[bench]'          # trl and what it needs; never a runtime dependency of grpo_lightning
    python -m benchmarks.bench_vs_trl [--rounds 2] [--steps 3] [--warmup 1] [--work-dir DIR] [--sweep]
    python -m benchmarks.bench_vs_trl --device cuda --dtype bfloat16 --model-shape internvl3-1b   # on a GPU

Builds, offline, one random-weight InternVL checkpoint (``grpo_demo.models.CPU_MODEL_SHAPE``: real 448-pixel tiles of
14-pixel patches, so 1,024 patches per tile through the vision tower and 256 image tokens per prompt, a Qwen2-shaped
language model) and a synthetic ViVQA-X dataset, then trains it with both trainers on the same prompts in the same order
(no shuffling): B prompts x G completions per optimizer step, every completion exactly L tokens (``min_new_tokens`` =
``max_new_tokens``), the same sampling settings, KL weight, loss, optimizer (AdamW, no weight decay, constant learning
rate), gradient clipping, fp32 and sdpa attention, gradient checkpointing off (``--gradient-checkpointing``: on in both,
non-reentrant), one generation and one optimizer step per batch (``num_iterations`` 1).
``benchmarks.trl_settings.mapping_table`` prints which setting of ours is which of TRL's; ``benchmarks.trl_baseline``
runs TRL and checks the equal work.

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
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    REPO_ROOT,
    busy_warning,
    device_clock,
    format_table,
    git_head,
    load_average,
    machine_busy_seconds,
    others_share,
    own_cpu_seconds,
    package_version,
    peak_gpu_mib,
    peak_rss_mib,
    quiet_trainer,
    start_device,
    wait_for_quiet,
    work_directory,
)
from benchmarks.trl_baseline import check_equal_work, prepare_trl_inputs, run_trl
from benchmarks.trl_settings import (
    DEVICES,
    DTYPES,
    MODEL_SHAPE_NAMES,
    TRL_LM_HEADS,
    BenchSettings,
    mapping_table,
    model_shape,
    ours_module_kwargs,
    ours_precision,
    settings_from_json,
    sweep_settings,
)

RESULT_KEYS = ("ours", "trl")
#: Our step's stages as GRPOModule times them (``train/time/<stage>``), printed as a breakdown of our step.
OURS_STAGES = ("rollout", "reward", "reference", "update")


# ------------------------------------------------------------------------------------------------ results
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


# ------------------------------------------------------------------------------------------------ our worker
def _step_clock(device: str):
    """StepRecorder's per-step metrics plus the wall clock at the start of training and the end of each step."""
    from grpo_lightning.profiling import StepRecorder

    class StepClock(StepRecorder):
        def __init__(self) -> None:
            super().__init__()
            self.ends: list[float] = []
            self.start = 0.0

        def on_train_start(self, trainer, pl_module) -> None:
            self.start = device_clock(device)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            self.ends.append(device_clock(device))

    return StepClock()


def _step_records(clock) -> list[dict[str, Any]]:
    """Per step: wall time since the previous step's end, and the step time, token counts and stage times logged."""
    previous = [clock.start, *clock.ends[:-1]]
    return [
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


def run_ours(spec: dict[str, Any]) -> dict[str, Any]:
    """One GRPOModule fit of ``total_steps`` steps; per-step wall times, in-step times and token counts."""
    import functools

    import lightning as L
    import torch

    from grpo_lightning.data import ViVQAXDataModule
    from grpo_lightning.module import GRPOModule

    s = settings_from_json(spec["settings"])
    start_device(s.device, s.threads)
    clock = _step_clock(s.device)
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
    trainer = quiet_trainer(
        accelerator="gpu" if s.device == "cuda" else "cpu",
        devices=1,
        precision=ours_precision(s),
        max_steps=s.total_steps,
        num_sanity_val_steps=0,
        callbacks=[clock],
    )
    trainer.fit(module, datamodule=data)
    peak, peak_gpu = peak_rss_mib(), peak_gpu_mib(s.device)
    return {
        "steps": _step_records(clock),
        "peak_rss_mib": peak,
        "peak_gpu_mib": peak_gpu,
        "parameters": sum(p.numel() for p in module.model.parameters()),
        "vision_parameters": sum(p.numel() for p in module.adapter.vision_tower(module.model).parameters()),
    }


def worker_main(kind: str, spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    result = run_ours(spec) if kind == "ours" else run_trl(spec)
    Path(out_path).write_text(json.dumps(result), encoding="utf-8")


# ------------------------------------------------------------------------------------------------ orchestration
def prepare_assets(work_dir: Path, settings: BenchSettings) -> dict[str, str]:
    """Build (or reuse, when built with the same shape, weights dtype and seed) the checkpoint of
    ``settings.model_shape`` and the dataset under ``work_dir``."""
    import grpo_demo  # loads torch: not at import time

    seed, shape = settings.seed, model_shape(settings.model_shape)
    marker = work_dir / f"bench_assets-{settings.model_shape}.json"
    meta = {"shape": shape, "dtype": settings.dtype, "seed": seed}
    paths = {
        "model_path": str(work_dir / "models" / f"bench-internvl-{settings.model_shape}"),
        "train_file": str(grpo_demo.split_json_path(work_dir, "train")),
        "train_image_dir": str(grpo_demo.image_dir(work_dir, "train")),
    }
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == meta:
        return paths
    marker.unlink(missing_ok=True)
    splits = grpo_demo.write_dataset(grpo_demo.data_dir(work_dir), seed=seed, num_train=64, num_val=4)
    corpus = grpo_demo.default_corpus([r for split in splits.values() for r in split], seed=seed)
    grpo_demo.build_tiny_internvl(paths["model_path"], seed=seed, corpus=corpus, dtype=settings.dtype, **shape)
    marker.write_text(json.dumps(meta), encoding="utf-8")
    return paths


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
    command = [sys.executable, "-m", "benchmarks.bench_vs_trl", "--worker", kind, str(spec_path), str(out_path)]
    wait_for_quiet(quiet_wait)
    busy, ours_cpu, started = machine_busy_seconds(), own_cpu_seconds(), time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
    wall = time.perf_counter() - started
    if code != 0 or not out_path.is_file():
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise RuntimeError(f"The {kind} run ({tag}) failed with exit code {code}; end of {log_path}:\n{tail}")
    result = json.loads(out_path.read_text(encoding="utf-8"))
    result["process_s"] = wall
    result["others_share"] = others_share(machine_busy_seconds() - busy, own_cpu_seconds() - ours_cpu, wall)
    return result


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
    versions = ", ".join(f"{name} {package_version(name)}" for name in ("torch", "transformers", "trl", "lightning"))
    return "\n".join(
        [
            f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; {versions}",
            f"device: {_device_name(s)}; weights and autocast {s.dtype}",
            f"grpo_lightning at git {git_head()}; {s.threads} torch threads in each run; load average {load_average()}",
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
        for name, r in (("ours (grpo_lightning)", o), (f"TRL {package_version('trl')}", t))
    ]
    headers = ("trainer", "s/step", "s in step", "peak RSS MiB", *(["peak GPU MiB"] if gpu else []))
    stages = ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in o["stages"].items())
    return "\n".join(
        [
            f"\nmodel parameters: {o['parameters']:,} ({o['vision_parameters']:,} in the vision tower); equal work "
            f"checked: every completion {settings.completion_length} tokens, the same prompt + completion tokens "
            "per step in both",
            f"result: medians over {o['steps']} measured steps per trainer (whole run {elapsed:.0f} s, load average "
            f"{load_average()} at the end)",
            format_table(headers, rows),
            f"ours, median seconds per stage: {stages}",
            *busy_warning(max(o["others_share"], t["others_share"])),
            ratio_line(o, t),
        ]
    )


def _device_name(settings: BenchSettings) -> str:
    """The GPU's name and memory, or ``CPU``."""
    if settings.device != "cuda":
        return "CPU"
    import torch

    props = torch.cuda.get_device_properties(0)
    return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, CUDA {torch.version.cuda}"


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


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    """The command line's settings; dtype and model shape default by device (bf16 and InternVL3-1B on a GPU)."""
    return BenchSettings(
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


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(*args.worker)
        return
    settings = settings_from_args(args)
    if settings.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit("--device cuda: no CUDA device is visible here; run on a GPU machine or leave --device out.")
    if package_version("trl") == "missing":
        sys.exit("trl is not installed: pip install -e '.[bench]' (the bench extra), then run this again.")
    started = time.perf_counter()
    with work_directory(args.work_dir, "bench_vs_trl-") as work_dir:
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
