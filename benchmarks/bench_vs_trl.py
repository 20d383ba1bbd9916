"""Seconds per GRPO step and peak memory: our GRPOModule against TRL's GRPOTrainer, doing the same work.

    pip install -e '.[bench]'          # trl and what it needs; never a runtime dependency of grpo_lightning
    python -m benchmarks.bench_vs_trl [--rounds 3] [--steps 3] [--warmup 1] [--work-dir DIR] [--sweep]
    python -m benchmarks.bench_vs_trl --device cuda --dtype bfloat16 --model-shape internvl3-1b   # on a GPU

Builds, offline, one random-weight InternVL checkpoint (``grpo_demo.models.CPU_MODEL_SHAPE``: real 448-pixel tiles of
14-pixel patches, so 1,024 patches per tile through the vision tower and 256 image tokens per prompt, a Qwen2-shaped
language model) and a synthetic ViVQA-X dataset, then trains it with each trainer on the same prompts in the same order
(no shuffling): B = 2 prompts x G = 8 completions per optimizer step, every completion exactly L = 128 tokens
(``min_new_tokens`` = ``max_new_tokens``), the same sampling settings, KL weight, loss, optimizer (AdamW, no weight
decay, constant learning rate), gradient clipping, fp32 and sdpa attention, gradient checkpointing off
(``--gradient-checkpointing``: on in both, non-reentrant), one generation and one optimizer step per batch
(``num_iterations`` 1). ``benchmarks.trl_settings.mapping_table`` prints which setting of ours is which of TRL's;
``benchmarks.trl_baseline`` runs TRL and checks the equal work.

Three trainers: ours as it trains (``ours``: each prompt's image encoded and its prompt prefilled once, shared by its
G sequences), ours with that sharing off (``unshared``: the adapter's ``shared_encoding=False`` reference path, where
every sequence encodes its image and runs its whole prompt, as TRL does), and TRL. Ours unshared against TRL is the
framework's overhead on the same algorithmic work; ours against ours unshared is what the sharing saves.

Each trainer runs in one long-lived process (so its peak RSS is that trainer's alone), with the same thread count and
seed: it loads, takes ``--warmup`` steps and pauses; then each of ``--rounds`` rounds asks every trainer, one at a time
in an order shuffled per round (seeded by ``--seed``, printed), for its next ``--steps`` steps. The paused trainers
wait idle, their freed memory handed back to the system. A step's time is the wall time from the end of the previous
step (or from the command that resumed the trainer) to the end of this one, taken by a callback in each trainer, so it
holds everything the trainer does per step: data loading, sampling, reward, reference and policy passes, backward,
optimizer, logging; the time inside the step (ours: ``train/step_time``, TRL: ``on_step_begin`` to ``on_step_end``) is
printed beside it. Per trainer the result gives the median over every measured step of all rounds, with the spread
(min-max, interquartile range, median absolute deviation) and each round's median. Before timing anything, the prompt
token ids of both trainers' tokenization paths are compared, and at the end the tokens trained on are checked step by
step (``check_equal_work``, each of ours against TRL): every completion is L tokens, and both counted the same prompt
and completion tokens; any difference stops the benchmark.

On a shared machine each block of steps first waits (``--quiet-wait``) until other processes leave the CPUs nearly
idle, and the share of CPU time they took during the block is printed beside it; a warning line comes before the last
line when that share went above 10%.

The last line is ``ratio_step_time=<ours/trl> ratio_peak_rss=<ours/trl>`` (ours with sharing on). ``--sweep`` also
times ours and TRL (one round each) as G goes 2, 4, 8, 16 (length L) and as L goes 32, 128, 256 (G as given), at most
8 sequences per pass, printed before that line.

TRL on a CPU: its fused log-prob head (``trl.kernels.chunked_logprob``) projects only the completion positions through
the LM head on CUDA (Triton), but every position, prompt included, elsewhere. The default (``--trl-lm-head
completion-only``) makes TRL score only the completion positions on the CPU too (same log-probs, less work), for the
comparison with TRL as lean as on a GPU; ``--trl-lm-head stock`` measures TRL as installed.

On a GPU (``--device cuda``) all trainers run on the one visible device, in the given ``--dtype`` (``bfloat16``:
weights loaded in bf16 and bf16 autocast in both, torch AdamW on the bf16 weights in both: Lightning's
``bf16-mixed`` precision and TRL's ``bf16=True``), and ``--model-shape internvl3-1b`` builds the 802M-parameter
InternVL3-1B-shaped model of ``scripts/gpu_check.py``. The step clocks synchronize the device before reading the
time; each trainer's peak GPU memory (``torch.cuda.max_memory_allocated``) is printed beside its peak RSS, and the last
line gains ``ratio_peak_gpu_memory=<ours/trl>``. The trainers' processes share the GPU, each idle while another runs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file, not with -m: import from the repository as -m does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import benchmarks  # noqa: F401  (sets the Hugging Face libraries offline before anything loads them)

from benchmarks.common import (
    REPO_ROOT,
    StepGate,
    WorkerChannel,
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
    process_cpu_seconds,
    quiet_trainer,
    release_free_memory,
    spread,
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

#: The trainers, in the order of the result table: ours as it trains, TRL, ours with shared encoding off.
TRAINERS = ("ours", "trl", "unshared")
#: The trainers of ``--sweep``'s points.
SWEEP_TRAINERS = ("ours", "trl")
#: Our step's stages as GRPOModule times them (``train/time/<stage>``), printed as a breakdown of our step.
OURS_STAGES = ("rollout", "reward", "reference", "update")


def trainer_label(kind: str) -> str:
    return {
        "ours": "ours (grpo_lightning)",
        "unshared": "ours, sharing off",
        "trl": f"TRL {package_version('trl')}",
    }[kind]


# ------------------------------------------------------------------------------------------------ results
def measured_steps(run: dict[str, Any], skip: int) -> list[dict[str, Any]]:
    """A trainer's step records after its first ``skip`` (warm-up) steps."""
    return run["steps"][skip:]


def summarize(run: dict[str, Any], skip: int) -> dict[str, Any]:
    """One trainer's figures: the spread of its measured steps' wall times (``wall``, see ``spread``; ``wall_s`` is
    its median), the median time inside a step, each round's median, its peak RSS and peak GPU memory (None on a
    CPU), and the median of each of our stages where it logs them."""
    steps = measured_steps(run, skip)
    wall = spread([step["wall_s"] for step in steps])
    summary = {
        "wall": wall,
        "wall_s": wall["median"],
        "in_step_s": statistics.median(step["in_step_s"] for step in steps),
        "round_medians": [statistics.median(step["wall_s"] for step in block) for block in run.get("blocks", [])],
        "peak_rss_mib": run["peak_rss_mib"],
        "peak_gpu_mib": run.get("peak_gpu_mib"),
        "steps": len(steps),
        "others_share": max(run.get("others_shares", [0.0])),
    }
    if all("stages" in step for step in steps):
        summary["stages"] = {stage: statistics.median(step["stages"][stage] for step in steps) for stage in OURS_STAGES}
    for key in ("parameters", "vision_parameters"):
        if key in run:
            summary[key] = run[key]
    return summary


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


def round_orders(kinds: Sequence[str], rounds: int, seed: int) -> list[list[str]]:
    """The order the trainers run in, per round: each round a shuffle of ``kinds`` drawn from one seeded stream, so
    the same seed gives the same orders."""
    rng = random.Random(seed)
    orders = []
    for _ in range(rounds):
        order = list(kinds)
        rng.shuffle(order)
        orders.append(order)
    return orders


# ------------------------------------------------------------------------------------------------ the workers' side
def _ours_step_clock(device: str, gate: StepGate):
    """StepRecorder's per-step metrics, handed to ``gate`` as each step's record at the step's end."""
    from benchmarks.profiling import StepRecorder

    class StepClock(StepRecorder):
        def on_train_start(self, trainer, pl_module) -> None:
            gate.begin()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            metrics = self.steps[-1]
            gate.step_done(
                {
                    "in_step_s": metrics["train/step_time"],
                    "completion_tokens": round(metrics["train/tokens/completion"]),
                    "trained_tokens": round(metrics["train/tokens/trained"]),
                    # implied: completion_tokens == B*G*L with every completion <= L
                    "min_completion_length": None,
                    "max_completion_length": None,
                    "stages": {stage: metrics[f"train/time/{stage}"] for stage in OURS_STAGES},
                }
            )

    return StepClock()


def run_ours(spec: dict[str, Any], gate: StepGate, shared_encoding: bool = True) -> dict[str, Any]:
    """One GRPOModule fit of ``total_steps`` steps, paused between blocks of steps by ``gate`` (which receives every
    step's record); ``shared_encoding=False`` trains through the adapter's unshared reference path. Returns the peak
    memory and the model's parameter counts."""
    import functools

    import lightning as L
    import torch

    from grpo_lightning.data import ViVQAXDataModule
    from grpo_lightning.module import GRPOModule

    s = settings_from_json(spec["settings"])
    start_device(s.device, s.threads)
    module = GRPOModule(
        optimizer=functools.partial(torch.optim.AdamW, **s.adamw_kwargs()),
        **ours_module_kwargs(s, spec["model_path"]),
    )
    if not shared_encoding:
        module.configure_model()  # loads the model and its adapter now (the trainer would, at fit)
        module.adapter = type(module.adapter)(module.adapter.processor, shared_encoding=False)
        module.adapter.attach(module.model)
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
        callbacks=[_ours_step_clock(s.device, gate)],
    )
    trainer.fit(module, datamodule=data)
    return {
        "peak_rss_mib": peak_rss_mib(),
        "peak_gpu_mib": peak_gpu_mib(s.device),
        "parameters": sum(p.numel() for p in module.model.parameters()),
        "vision_parameters": sum(p.numel() for p in module.adapter.vision_tower(module.model).parameters()),
    }


def worker_main(kind: str, spec_path: str) -> None:
    """A trainer's process: commands on stdin, replies on the stdout it was started with; whatever else is printed
    (the trainers' own output) goes to stderr, the run's log."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    channel = WorkerChannel(sys.stdin, replies)
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    settings = settings_from_json(spec["settings"])
    gate = StepGate(channel, settings.warmup_steps, lambda: device_clock(settings.device), release_free_memory)
    if kind == "trl":
        result = run_trl(spec, gate)
    else:
        result = run_ours(spec, gate, shared_encoding=kind == "ours")
    channel.send({"event": "done", "steps": gate.pending, **result})


# ------------------------------------------------------------------------------------------------ the harness's side
class WorkerFailed(RuntimeError):
    """A trainer's process stopped or answered out of protocol."""


class Worker:
    """One trainer's long-lived process, driven over ``WorkerChannel``'s protocol (see ``benchmarks.common``).

    Args:
        kind: ``ours``, ``unshared`` or ``trl``.
        command: the process's command line (``--worker KIND SPEC`` of this module).
        log_path: where the process's own output goes.
        env: its environment.
    """

    def __init__(self, kind: str, command: Sequence[str], log_path: Path, env: dict[str, str] | None = None):
        self.kind, self.log_path = kind, log_path
        self.steps: list[dict[str, Any]] = []
        self.blocks: list[list[dict[str, Any]]] = []
        self.others_shares: list[float] = []
        self._log = open(log_path, "w", encoding="utf-8")  # closed by close()
        self.process = subprocess.Popen(
            list(command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            cwd=REPO_ROOT,
            text=True,
            encoding="utf-8",
        )

    def _reply(self, expected: str) -> dict[str, Any]:
        """The worker's next message, which must be the ``expected`` event; its step records are kept."""
        line = self.process.stdout.readline()
        message = json.loads(line) if line.strip() else {}
        if message.get("event") != expected:
            if not line:  # the process ended: wait for its exit code
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=60)
            self._log.flush()
            tail = self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
            got = f"the reply {line.strip()!r}" if line else f"exit code {self.process.poll()}"
            raise WorkerFailed(
                f"The {self.kind} trainer failed: expected {expected!r}, got {got}; end of {self.log_path}:\n{tail}"
            )
        self.steps.extend(message["steps"])
        return message

    def _send(self, command: dict[str, Any]) -> None:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def warm_up(self) -> list[dict[str, Any]]:
        """Wait until the trainer has loaded and taken its warm-up steps; returns their records."""
        return self._reply("paused")["steps"]

    def run_block(self, steps: int) -> list[dict[str, Any]]:
        """Resume the trainer for ``steps`` steps and wait until it pauses again; returns their records, and keeps
        them as one block (a round), with the share of the CPUs that other processes took meanwhile."""
        busy, cpu, started = machine_busy_seconds(), self._cpu_seconds(), time.perf_counter()
        self._send({"command": "run", "steps": steps})
        block = self._reply("paused")["steps"]
        wall = time.perf_counter() - started
        self.others_shares.append(others_share(machine_busy_seconds() - busy, self._cpu_seconds() - cpu, wall))
        self.blocks.append(block)
        return block

    def finish(self) -> dict[str, Any]:
        """Let the trainer run to its end; returns its result: every step's record in order, the blocks, and what
        the process reported (peak RSS, ...)."""
        self._send({"command": "finish"})
        done = self._reply("done")
        self.process.wait(timeout=600)
        self.close()
        result = {key: value for key, value in done.items() if key not in ("event", "steps")}
        return {**result, "steps": self.steps, "blocks": self.blocks, "others_shares": self.others_shares}

    def _cpu_seconds(self) -> float:
        return process_cpu_seconds(self.process.pid) + own_cpu_seconds()

    def close(self) -> None:
        """Stop the process if it still runs (a failure elsewhere), and close its pipes and log."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=60)
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        self._log.close()


def worker_command(kind: str, spec_path: Path) -> list[str]:
    """The command line of a trainer's process: this module's hidden ``--worker KIND SPEC`` mode."""
    return [sys.executable, "-m", "benchmarks.bench_vs_trl", "--worker", kind, str(spec_path)]


def worker_environment(threads: int) -> dict[str, str]:
    """The trainers' environment: offline, the thread count, no tokenizer threads, no experiment trackers."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "WANDB_DISABLED": "true",
    }


@contextlib.contextmanager
def started_workers(
    kinds: Sequence[str], settings: BenchSettings, spec: dict[str, Any], work_dir: Path, tag: str, quiet_wait: float
) -> Iterator[dict[str, Worker]]:
    """Start each trainer's process and wait for its warm-up, one trainer at a time; every process is stopped on
    the way out if it still runs."""
    spec = {**spec, "settings": dataclasses.asdict(settings), "output_dir": str(work_dir / f"trl-output-{tag}")}
    spec_path = work_dir / f"spec-{tag}.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    workers: dict[str, Worker] = {}
    try:
        for kind in kinds:
            wait_for_quiet(quiet_wait)
            command = worker_command(kind, spec_path)
            started = time.perf_counter()
            workers[kind] = Worker(
                kind, command, work_dir / f"log-{tag}-{kind}.txt", worker_environment(settings.threads)
            )
            warm = workers[kind].warm_up()
            times = " ".join(f"{step['wall_s']:.2f}" for step in warm)
            print(
                f"  {kind:>8}: loaded and warmed up in {time.perf_counter() - started:.0f} s "
                f"(warm-up steps [{times}] s, left out)",
                flush=True,
            )
        yield workers
    finally:
        for worker in workers.values():
            worker.close()


def compare(
    settings: BenchSettings,
    spec: dict[str, Any],
    work_dir: Path,
    tag: str,
    quiet_wait: float,
    kinds: Sequence[str] = TRAINERS,
) -> dict[str, dict[str, Any]]:
    """Warm up each trainer once, run ``settings.rounds`` rounds of ``settings.measured_steps`` steps per trainer in a
    shuffled order per round, check equal work (each of ours against TRL), and return each trainer's summary."""
    orders = round_orders(kinds, settings.rounds, settings.seed)
    with started_workers(kinds, settings, spec, work_dir, tag, quiet_wait) as workers:
        for r, order in enumerate(orders):
            print(f"  round {r + 1}/{settings.rounds}, order: {', '.join(order)}", flush=True)
            for kind in order:
                wait_for_quiet(quiet_wait)
                block = workers[kind].run_block(settings.measured_steps)
                times = " ".join(f"{step['wall_s']:.2f}" for step in block)
                print(
                    f"    {kind:>8}: steps [{times}] s, other processes "
                    f"{workers[kind].others_shares[-1]:.0%} of the CPUs",
                    flush=True,
                )
        runs = {kind: workers[kind].finish() for kind in kinds}
    for kind in kinds:
        if kind != "trl":
            check_equal_work(settings, runs[kind], runs["trl"], names=(kind, "trl"))
    return {kind: summarize(runs[kind], settings.warmup_steps) for kind in kinds}


# ------------------------------------------------------------------------------------------------ assets and output
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


def run_sweep(settings: BenchSettings, spec: dict[str, Any], work_dir: Path, quiet_wait: float) -> str:
    """Ours and TRL at every sweep point (one round each); returns the table of median seconds per step, with our
    stage medians beside them."""
    print(f"\nsweep: one round per point, {settings.warmup_steps} warm-up + {settings.measured_steps} measured steps")
    rows = []
    for axis, point in sweep_settings(settings):
        g, length = point.num_generations, point.completion_length
        print(f"point G={g} L={length}", flush=True)
        summary = compare(point, spec, work_dir, f"sweep-G{g}-L{length}", quiet_wait, kinds=SWEEP_TRAINERS)
        o, t = summary["ours"], summary["trl"]
        memory = [f"{o['peak_rss_mib']:.0f}", f"{t['peak_rss_mib']:.0f}"]
        if settings.device == "cuda":
            memory += [f"{o['peak_gpu_mib']:.0f}", f"{t['peak_gpu_mib']:.0f}"]
        stages = "/".join(f"{o['stages'][stage]:.1f}" for stage in OURS_STAGES)
        ratio = o["wall_s"] / t["wall_s"]
        rows.append(
            (axis, g, length, point.micro_batch, f"{o['wall_s']:.2f}", stages, f"{t['wall_s']:.2f}", f"{ratio:.3f}")
            + tuple(memory)
        )
    headers = (
        "varied",
        "G",
        "L",
        "per pass",
        "ours s/step",
        "ours " + "/".join(OURS_STAGES) + " s",
        "TRL s/step",
        "ours/TRL",
        "ours RSS MiB",
        "TRL RSS MiB",
    )
    if settings.device == "cuda":
        headers += ("ours GPU MiB", "TRL GPU MiB")
    return format_table(headers, rows)


def describe(settings: BenchSettings, paths: dict[str, str], spec: dict[str, Any]) -> str:
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
            f"lr {s.learning_rate:g}, loss {s.loss_type}",
            f"timing: one process per trainer ({', '.join(TRAINERS)}), {s.warmup_steps} warm-up step(s) each, then "
            f"{s.rounds} rounds of {s.measured_steps} measured steps per trainer, order shuffled per round "
            f"(seed {s.seed})",
            format_table(("setting", "ours (GRPOModule)", "TRL (GRPOConfig)"), mapping_table(s, spec["trl_lm_head"])),
        ]
    )


def report(settings: BenchSettings, summary: dict[str, dict[str, Any]], elapsed: float) -> str:
    """The result table (median and spread per trainer), our stage breakdowns, the two ratios that separate the
    framework from the sharing, and, last, the ratio line (ours / TRL)."""
    o, t = summary["ours"], summary["trl"]
    kinds = [kind for kind in TRAINERS if kind in summary]
    gpu = o.get("peak_gpu_mib") is not None
    rows = []
    for kind in kinds:
        r = summary[kind]
        w = r["wall"]
        rows.append(
            (
                trainer_label(kind),
                f"{w['median']:.2f}",
                f"{w['min']:.2f}-{w['max']:.2f}",
                f"{w['iqr']:.2f}",
                f"{w['mad']:.2f}",
                " ".join(f"{m:.2f}" for m in r["round_medians"]),
                f"{r['in_step_s']:.2f}",
                f"{r['peak_rss_mib']:.0f}",
                *([f"{r['peak_gpu_mib']:.0f}"] if gpu else []),
            )
        )
    headers = (
        "trainer",
        "median s/step",
        "min-max",
        "IQR",
        "MAD",
        "round medians",
        "s in step",
        "peak RSS MiB",
        *(["peak GPU MiB"] if gpu else []),
    )
    lines = [
        f"\nmodel parameters: {o['parameters']:,} ({o['vision_parameters']:,} in the vision tower); equal work "
        f"checked: every completion {settings.completion_length} tokens, the same prompt + completion tokens "
        "per step in each of ours and TRL",
        f"result: {o['steps']} measured steps per trainer ({settings.rounds} rounds of {settings.measured_steps}); "
        f"whole run {elapsed:.0f} s, load average {load_average()} at the end",
        format_table(headers, rows),
    ]
    for kind in kinds:
        if "stages" in summary[kind]:
            stages = ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in summary[kind]["stages"].items())
            lines.append(f"{trainer_label(kind)}, median seconds per stage: {stages}")
    if "unshared" in summary:
        u = summary["unshared"]
        lines.append(
            f"framework (ours sharing off / TRL, the same work): {u['wall_s'] / t['wall_s']:.3f}; sharing (ours / ours "
            f"sharing off): {o['wall_s'] / u['wall_s']:.3f}"
        )
    lines += busy_warning(max(summary[kind]["others_share"] for kind in kinds))
    lines.append(ratio_line(o, t))
    return "\n".join(lines)


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
    parser.add_argument("--rounds", type=int, default=defaults.rounds, help="rounds, each a block of steps per trainer")
    parser.add_argument(
        "--steps", type=int, default=None, help="measured steps per trainer and round (default 3; sweep points 2)"
    )
    parser.add_argument(
        "--warmup", type=int, default=defaults.warmup_steps, help="warm-up steps per trainer, before the rounds"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of every trainer")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="trainers' seed and the rounds' orders")
    parser.add_argument("--device", choices=DEVICES, default=defaults.device, help="where the trainers run")
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
        default="completion-only",
        help="completion-only: TRL scores only the completion positions, as it does on CUDA (default); stock: TRL as "
        "installed (on a CPU its log-prob head projects every position, prompt included)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=20.0,
        help="before each block of steps, wait up to this many s for a quiet machine",
    )
    parser.add_argument("--work-dir", default=None, help="keep the model, data and logs here (default: a temp dir)")
    parser.add_argument(
        "--sweep", action="store_true", help="also time G = 2..16 and L = 32..256 (ours and TRL), before the result"
    )
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
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
        rounds=args.rounds,
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
    # a terminated harness unwinds, so that its trainers' processes are stopped with it (``started_workers``)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.perf_counter()
    with work_directory(args.work_dir, "bench_vs_trl-") as work_dir:
        paths = prepare_assets(work_dir, settings)
        spec = {**paths, **prepare_trl_inputs(paths, work_dir, settings), "trl_lm_head": args.trl_lm_head}
        print(describe(settings, paths, spec), flush=True)
        sweep = None
        if args.sweep:
            point_settings = dataclasses.replace(settings, measured_steps=args.steps or 2, rounds=1)
            sweep = run_sweep(point_settings, spec, work_dir, args.quiet_wait)
        print("\nmain comparison", flush=True)
        summary = compare(settings, spec, work_dir, "main", args.quiet_wait)
    if sweep:
        print("\nsweep: median seconds per step (wall time between step ends), our stages and peak RSS, one round each")
        print(sweep)
    print(report(settings, summary, time.perf_counter() - started))


if __name__ == "__main__":
    main()
