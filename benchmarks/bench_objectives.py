"""Which objective on the demo: GRPO and its variants, each trained on the offline demo over several seeds.

    python -m benchmarks.bench_objectives [--seeds 0 1 2] [--objectives grpo sapo ...] [--steps 100] [--threads 2]
        [--work-dir DIR] [--results objectives.json] [--png benchmarks/objectives.png]

Each run is ``python -m grpo_lightning fit --config configs/demo.yaml --config <overlay>`` in a process of its own:
the demo's model, data, rewards and validation, ``--seed_everything <seed>``, with the objective's ``model.loss.*`` /
``model.sampling.*`` settings (:data:`OBJECTIVES`) as the overlay, its TensorBoard logs under the work folder. Every
objective, plain GRPO included, runs with ``loss.num_iterations: 2`` (two optimizer steps on each rollout, mu = 2 in
the GRPO paper): at 1 the probability ratio is exactly 1, and the clip (ppo, gspo), the gate (sapo) and the cap
(cispo) never act, so those four would train identically. ``--steps`` is ``trainer.max_steps``, which counts
optimizer steps: the demo's 100 are 50 rollouts of 4 prompts x 8 completions here, validated after 25 and 50.

All objectives run for one seed before the next seed, in an order shuffled per seed (printed): a slow spell of a
shared machine then spreads over objectives rather than hitting one. Each process gets ``--threads`` torch threads
(``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS``; 2 by default, the CPU benchmark machine's cores).

Printed, a Markdown table with one row per objective, each figure the mean over seeds and its spread (min..max over
seeds): the train reward's final-quarter mean (``train/reward``, the last quarter of its logged steps), the format
reward's (``train/rewards/format``), the accuracy at the last validation (``val/accuracy``), the entropy at the end
(``train/entropy``, mean of the last 10 logged steps) and the seconds per training step (mean of ``train/step_time``,
one rollout and its two optimizer steps, without validation and checkpoints: the same measure for every objective).
``--results`` writes every run's figures and curves as JSON, ``--png`` the reward curves: per objective the mean over
seeds of a 10-step moving mean, with a band from the lowest to the highest seed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file, not with -m: import from the repository as -m does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import benchmarks  # noqa: F401  (sets the Hugging Face libraries offline before anything loads them)

import yaml

import grpo_demo
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

#: What every objective shares on top of configs/demo.yaml: two optimizer steps per rollout, so that the ratio moves.
COMMON = {"loss": {"num_iterations": 2}}

#: GRPO with the adaptive entropy coefficient aims at this entropy (nats per token). In a GRPO run of the demo
#: (mu = 2, seed 0, 50 rollouts) ``train/entropy`` starts at 0.85 to 1.07 over the first five rollouts, stays between
#: 0.65 and 1.09 until rollout 30, then falls to 0.45 by the end. A target of 0.7 lies within that range: the bonus
#: acts now and then in the first 30 rollouts and on every step after, so the run shows whether holding the entropy
#: up changes the reward. A target below 0.43 (the run's lowest) would never switch the bonus on; one above 1.09 (its
#: highest) would never switch it off. With it (seed 0) the coefficient rose to 0.1 and the entropy of the last 10
#: rollouts was 0.53 to 0.91 (rising), against 0.43 to 0.56 without.
ENTROPY_TARGET = 0.7

#: Each objective's ``model`` settings on top of configs/demo.yaml and :data:`COMMON`.
OBJECTIVES: dict[str, dict[str, Any]] = {
    "grpo": {},
    # DAPO: token mean over the global batch, clip-higher, and the demo's dynamic sampling
    # (configs/demo_dynamic_sampling.yaml's settings)
    "dapo": {
        "loss": {"loss_type": "dapo", "epsilon_high": 0.28},
        "sampling": {"dynamic_sampling": True, "min_group_reward_std": 0.0, "max_refill_rounds": 4},
    },
    "dr_grpo": {"loss": {"loss_type": "dr_grpo", "scale_rewards": "none"}},
    # GSPO's clip range on the sequence ratio (arXiv 2507.18071): 3e-4 and 4e-4
    "gspo": {"loss": {"importance_sampling_level": "sequence", "epsilon_low": 3e-4, "epsilon_high": 4e-4}},
    "sapo": {"loss": {"policy_loss": "sapo"}},
    "cispo": {"loss": {"policy_loss": "cispo"}},
    # GMPO's clip range in log space (arXiv 2507.20673): 0.4 and 0.4
    "gmpo": {"loss": {"policy_loss": "gmpo", "epsilon_low": 0.4, "epsilon_high": 0.4}},
    "rloo": {"loss": {"advantage_estimator": "rloo", "scale_rewards": "none"}},
    "reinforce_pp": {"loss": {"advantage_estimator": "reinforce_pp", "scale_rewards": "batch"}},
    "grpo_entropy": {"loss": {"adaptive_entropy": True, "entropy_target": ENTROPY_TARGET}},
    # GRPO plus a supervised term on the references, its weight decaying from 0.1 to 0 over 100 steps
    "grpo_sft": {"loss": {"sft_coef": 0.1, "sft_decay_steps": 100}},
}

REWARD, FORMAT, ACCURACY, ENTROPY, STEP_TIME = (
    "train/reward",
    "train/rewards/format",
    "val/accuracy",
    "train/entropy",
    "train/step_time",
)
#: The curves a run's JSON keeps.
CURVES = (REWARD, FORMAT, ENTROPY, ACCURACY, STEP_TIME)
#: The table's columns: (header, the figure's key, decimals).
COLUMNS = (
    ("train reward, final quarter", "reward", 3),
    ("format reward, final quarter", "format", 3),
    ("val accuracy, last", "val_accuracy", 3),
    ("entropy, last 10 steps", "entropy", 3),
    ("s / training step", "step_s", 3),
)
Points = list[tuple[int, float]]


# ------------------------------------------------------------------------------------------------ the objectives
def overlay(name: str) -> dict[str, Any]:
    """Objective ``name``'s overlay on configs/demo.yaml: a ``model`` section, :data:`COMMON` with its settings on
    top."""
    settings = OBJECTIVES[name]
    groups = sorted({*COMMON, *settings})
    return {"model": {group: COMMON.get(group, {}) | settings.get(group, {}) for group in groups}}


def unknown_options(name: str) -> list[str]:
    """The options of objective ``name``'s overlay that this grpo_lightning's option groups do not have."""
    from grpo_lightning.config import GROUPS

    unknown = []
    for group, options in overlay(name)["model"].items():
        known = {field.name for field in fields(GROUPS[group])}
        unknown += [f"model.{group}.{option}" for option in options if option not in known]
    return unknown


def check_objectives(names: Sequence[str]) -> None:
    """Stop, with what to do, when an objective sets an option this grpo_lightning lacks (before any run starts)."""
    problems = [f"{name}: {', '.join(unknown)}" for name in names if (unknown := unknown_options(name))]
    if problems:
        raise SystemExit(
            "These objectives set options that this grpo_lightning does not have:\n  "
            + "\n  ".join(problems)
            + "\nLeave them out with --objectives, or run a grpo_lightning that has these options."
        )


# ------------------------------------------------------------------------------------------------ one run
def fit_command(overlay_path: Path, work_dir: Path, name: str, seed: int, steps: int) -> list[str]:
    """The command line of one run: the demo with the overlay, ``steps`` optimizer steps, validated twice (halfway
    and at the end), logged to ``<work_dir>/logs/<name>/seed_<seed>``."""
    num_iterations = COMMON["loss"]["num_iterations"]
    val_interval = max(
        steps // num_iterations // 2, 1
    )  # training steps (rollouts), num_iterations optimizer steps each
    return [
        *(
            sys.executable,
            "-m",
            "grpo_lightning",
            "fit",
            "--config",
            "configs/demo.yaml",
            "--config",
            str(overlay_path),
        ),
        *("--seed_everything", str(seed), "--trainer.max_steps", str(steps)),
        *("--trainer.val_check_interval", str(val_interval), "--trainer.enable_progress_bar", "false"),
        *("--trainer.default_root_dir", str(work_dir), "--trainer.logger.init_args.save_dir", str(work_dir / "logs")),
        *("--trainer.logger.init_args.name", name, "--trainer.logger.init_args.version", f"seed_{seed}"),
    ]


def run_one(work_dir: Path, name: str, seed: int, steps: int, threads: int) -> dict[str, Any]:
    """Train objective ``name`` with ``seed``; its figures (:func:`summarize`), curves, wall time and the share of
    the CPUs other processes took meanwhile, or its ``error`` (the end of its log) when the run failed."""
    from scripts.tb_scalars import read_scalars

    overlay_path = work_dir / "overlays" / f"{name}.yaml"
    overlay_path.parent.mkdir(parents=True, exist_ok=True)
    overlay_path.write_text(yaml.safe_dump(overlay(name), sort_keys=False), encoding="utf-8")
    run_dir, log_path = work_dir / "logs" / name / f"seed_{seed}", work_dir / "output" / f"{name}_seed_{seed}.log"
    if run_dir.exists():  # a run of an earlier call: its event files would mix with this run's
        shutil.rmtree(run_dir)
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    record = {"objective": name, "seed": seed}
    record |= run_logged(fit_command(overlay_path, work_dir, name, seed, steps), log_path, env)
    if "error" in record:
        return record
    series = read_scalars(run_dir)
    return record | summarize(series) | {"curves": {tag: series.get(tag, []) for tag in CURVES}}


# ------------------------------------------------------------------------------------------------ figures
def final_quarter_mean(points: Points) -> float:
    """Mean value of the last quarter of ``points`` (at least the last point)."""
    values = [value for _, value in points]
    count = max(len(values) // 4, 1)
    return sum(values[-count:]) / count


def tail_mean(points: Points, count: int) -> float:
    """Mean value of the last ``count`` points (all of them when fewer)."""
    values = [value for _, value in points][-count:]
    return sum(values) / len(values)


def summarize(series: dict[str, Points]) -> dict[str, float | None]:
    """A run's figures from its scalar series (None where a series is missing, e.g. no validation ran)."""

    def figure(tag: str, reduce) -> float | None:
        return reduce(series[tag]) if series.get(tag) else None

    return {
        "reward": figure(REWARD, final_quarter_mean),
        "format": figure(FORMAT, final_quarter_mean),
        "val_accuracy": figure(ACCURACY, lambda points: points[-1][1]),
        "entropy": figure(ENTROPY, lambda points: tail_mean(points, 10)),
        "step_s": figure(STEP_TIME, lambda points: tail_mean(points, len(points))),
    }


def mean_and_range(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean, minimum and maximum of ``values`` (at least one)."""
    return sum(values) / len(values), min(values), max(values)


def format_figure(values: Sequence[float | None], decimals: int) -> str:
    """``mean (min..max)`` over the seeds that have the figure, the mean alone for one, ``n/a`` for none."""
    present = [value for value in values if value is not None]
    if not present:
        return "n/a"
    mean, low, high = mean_and_range(present)
    if len(present) == 1:
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ({low:.{decimals}f}..{high:.{decimals}f})"


def table(runs: Sequence[dict[str, Any]], names: Sequence[str]) -> str:
    """The Markdown table: one row per objective, each figure over its successful seeds."""
    rows = []
    for name in names:
        done = [run for run in runs if run["objective"] == name and "error" not in run]
        failed = sum(run["objective"] == name and "error" in run for run in runs)
        cells = [format_figure([run[key] for run in done], decimals) for _, key, decimals in COLUMNS]
        rows.append([name, f"{len(done)}" + (f" ({failed} failed)" if failed else ""), *cells])
    return format_table(["objective", "seeds", *(header for header, _, _ in COLUMNS)], rows)


# ------------------------------------------------------------------------------------------------ curves
def moving_mean(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving mean: point i is the mean of points i - window + 1 .. i (fewer at the start)."""
    means = []
    for i in range(len(values)):
        chunk = values[max(i - window + 1, 0) : i + 1]
        means.append(sum(chunk) / len(chunk))
    return means


def seed_band(curves: Sequence[Points], window: int) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps, mean, lowest and highest over seeds of each seed's ``window``-step moving mean, on the steps that every
    seed logged."""
    steps = sorted(set.intersection(*(set(step for step, _ in curve) for curve in curves)))
    smoothed = []
    for curve in curves:
        values = dict(zip([step for step, _ in curve], moving_mean([value for _, value in curve], window), strict=True))
        smoothed.append([values[step] for step in steps])
    columns = list(zip(*smoothed, strict=True))
    return steps, [sum(c) / len(c) for c in columns], [min(c) for c in columns], [max(c) for c in columns]


def plot_curves(runs: Sequence[dict[str, Any]], names: Sequence[str], path: Path, window: int = 10) -> None:
    """The train reward per objective, mean over seeds of a ``window``-step moving mean, with a band from the lowest
    to the highest seed, to ``path`` (PNG); colour and dash tell the objectives apart."""
    curves = {
        name: [run["curves"][REWARD] for run in runs if run["objective"] == name and run.get("curves", {}).get(REWARD)]
        for name in names
    }
    title = "Train reward on the demo per objective (seeds): mean over seeds, band = lowest..highest seed"
    draw_seed_bands(curves, path, title, "training step (one rollout, 2 optimizer steps)", window)


def draw_seed_bands(curves: dict[str, Sequence[Points]], path: Path, title: str, xlabel: str, window: int = 10) -> None:
    """Per name, the mean over its seeds' curves of a ``window``-step moving mean with a band from the lowest to the
    highest seed (a name without curves: no line), to ``path`` (PNG); colour and dash tell the names apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours, dashes = plt.get_cmap("tab10").colors, ("-", "--", "-.", ":")
    figure, axes = plt.subplots(figsize=(10, 6), dpi=120)
    for i, (name, runs) in enumerate(curves.items()):
        if not runs:
            continue
        steps, mean, low, high = seed_band(runs, window)
        colour = colours[i % len(colours)]
        axes.plot(
            steps, mean, color=colour, linestyle=dashes[i % len(dashes)], linewidth=1.8, label=f"{name} ({len(runs)})"
        )
        axes.fill_between(steps, low, high, color=colour, alpha=0.12, linewidth=0)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(f"train/reward, {window}-step moving mean")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(ncol=2, fontsize=8, loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


# ------------------------------------------------------------------------------------------------ the benchmark
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seed_everything of each round")
    parser.add_argument(
        "--objectives", nargs="+", choices=list(OBJECTIVES), default=list(OBJECTIVES), help="default: all"
    )
    parser.add_argument("--steps", type=int, default=100, help="trainer.max_steps: optimizer steps, 2 per rollout")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each run (OMP/MKL_NUM_THREADS)")
    parser.add_argument("--work-dir", default=None, help="keep the runs' logs here (default: a temporary folder)")
    parser.add_argument("--results", default=None, help="write every run's figures and curves to this JSON file")
    parser.add_argument("--png", default="benchmarks/objectives.png", help="the reward curves' figure")
    parser.add_argument(
        "--max-wait", type=float, default=0.0, help="before each run, wait up to this many seconds for a quiet machine"
    )
    args = parser.parse_args(argv)
    if args.steps < 2 * COMMON["loss"]["num_iterations"]:
        parser.error(f"--steps {args.steps}: at least {2 * COMMON['loss']['num_iterations']} (two rollouts).")
    return args


def run_all(args: argparse.Namespace, work_dir: Path) -> tuple[list[dict[str, Any]], dict[int, list[str]]]:
    """Every objective for each seed in turn, shuffled per seed; the runs and each seed's order."""
    runs, orders = [], {}
    for seed in args.seeds:
        order = list(args.objectives)
        random.Random(seed).shuffle(order)
        orders[seed] = order
        print(f"seed {seed}: {', '.join(order)}", flush=True)
        for name in order:
            wait_for_quiet(args.max_wait)
            run = run_one(work_dir, name, seed, args.steps, args.threads)
            runs.append(run)
            outcome = run.get("error", "").splitlines()[0] if "error" in run else f"reward {run['reward']:.3f}"
            print(f"  {name}: {run['wall_s']:.0f} s, {outcome}, others {run['others_share']:.0%}", flush=True)
    return runs, orders


def settings(args: argparse.Namespace, orders: dict[int, list[str]]) -> dict[str, Any]:
    """What the figures were measured with: versions, commit, threads, steps, load and the runs' order."""
    return {
        "commit": git_head(),
        "torch": package_version("torch"),
        "lightning": package_version("lightning"),
        "transformers": package_version("transformers"),
        "threads": args.threads,
        "steps": args.steps,
        "num_iterations": COMMON["loss"]["num_iterations"],
        "cores": os.cpu_count(),
        "load_average_at_end": load_average(),
        "orders": orders,
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    check_objectives(args.objectives)
    grpo_demo.build_demo_assets(REPO_ROOT / "assets" / "demo")  # nothing to do when built before
    with work_directory(args.work_dir, "bench_objectives_") as work_dir:
        runs, orders = run_all(args, work_dir)
    info = settings(args, orders)
    print(
        f"\ngrpo_lightning {info['commit']}, torch {info['torch']}, lightning {info['lightning']}, {args.threads} "
        f"threads per run on {info['cores']} cores; {args.steps} optimizer steps (mu = {info['num_iterations']}); "
        f"seeds {' '.join(map(str, args.seeds))}; spread = min..max over seeds\n"
    )
    print(table(runs, args.objectives))
    for line in busy_warning(max((run["others_share"] for run in runs), default=0.0)):
        print(line)
    for run in runs:
        if "error" in run:
            print(f"\n{run['objective']} seed {run['seed']} failed: {run['error']}")
    if args.results:
        Path(args.results).write_text(json.dumps({"settings": info, "runs": runs}, indent=1), encoding="utf-8")
    if args.png:
        plot_curves(runs, args.objectives, Path(args.png))
        print(f"\nreward curves: {args.png}")
    if any("error" in run for run in runs):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
