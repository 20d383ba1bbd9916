"""The TRL comparison harness's pure parts: settings mapping, equal-work check, summaries, the ratio line.

Runs without trl (CI does not install the ``bench`` extra) and without building or loading a model.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import bench_vs_trl as bench
from benchmarks.common import busy_warning, format_table, others_share
from benchmarks.trl_baseline import UnequalWorkError, check_equal_work, trl_format_reward
from benchmarks.trl_settings import (
    BenchSettings,
    mapping_table,
    model_shape,
    ours_module_kwargs,
    ours_precision,
    sweep_settings,
    trl_config_kwargs,
)
from grpo_demo.models import CPU_MODEL_SHAPE, INTERNVL3_1B_SHAPE

ROOT = Path(__file__).resolve().parent.parent


def _grpo_module_parameters() -> set[str]:
    """GRPOModule's constructor arguments, read from the source (importing it would load Lightning)."""
    tree = ast.parse((ROOT / "grpo_lightning" / "module.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "GRPOModule":
            init = next(f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__")
            return {a.arg for a in init.args.args + init.args.kwonlyargs} - {"self"}
    raise AssertionError("GRPOModule not found in grpo_lightning/module.py")


def _run(settings, completion_lengths=None, trained=None, num_steps=None, min_max=True):
    """A fake run record: every step's completions of the given lengths (default: all exactly L)."""
    n, length = settings.sequences_per_step, settings.completion_length
    lengths = completion_lengths or [length] * n
    steps = []
    for i in range(settings.total_steps if num_steps is None else num_steps):
        steps.append(
            {
                "wall_s": 1.0 + i,
                "in_step_s": 0.5 + i,
                "completion_tokens": sum(lengths),
                "trained_tokens": (trained or 1000) + i,
                "min_completion_length": min(lengths) if min_max else None,
                "max_completion_length": max(lengths) if min_max else None,
            }
        )
    return {"steps": steps, "peak_rss_mib": 1000.0}


def test_harness_helpers_work_without_trl():
    """In a fresh interpreter where ``import trl`` fails, the harness loads and its helpers run."""
    code = (
        "import sys; sys.modules['trl'] = None\n"  # None in sys.modules: import raises ImportError
        "import benchmarks.bench_vs_trl\n"
        "from benchmarks.trl_settings import BenchSettings, ours_module_kwargs, trl_config_kwargs\n"
        "s = BenchSettings(); trl_config_kwargs(s, 'o', []); ours_module_kwargs(s, 'm')\n"
        "print(sorted(m for m in ('torch', 'transformers', 'lightning', 'datasets') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"  # nothing heavy at import time either


def test_settings_validate():
    with pytest.raises(ValueError, match="num_generations"):
        BenchSettings(num_generations=1)
    with pytest.raises(ValueError, match="must divide"):
        BenchSettings(prompts_per_step=2, num_generations=4, micro_batch_size=3)
    with pytest.raises(ValueError, match="device must be one of cpu, cuda, not 'gpu'"):
        BenchSettings(device="gpu")
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16"):
        BenchSettings(dtype="float16")
    with pytest.raises(ValueError, match="model_shape must be one of cpu, internvl3-1b"):
        BenchSettings(model_shape="internvl3-2b")
    s = BenchSettings(prompts_per_step=2, num_generations=4, completion_length=32)
    assert (s.sequences_per_step, s.micro_batch, s.completion_tokens_per_step) == (8, 8, 256)


@pytest.mark.parametrize("micro_batch_size", [None, 2, 4])
def test_both_trainers_get_the_same_work(micro_batch_size):
    s = BenchSettings(prompts_per_step=2, num_generations=4, completion_length=24, micro_batch_size=micro_batch_size)
    ours = ours_module_kwargs(s, "/m")
    trl = trl_config_kwargs(s, "/out", [5, 7])
    assert set(ours) <= _grpo_module_parameters()
    # one generation of B x G sequences and one optimizer step per batch, in equal micro-batches
    assert trl["generation_batch_size"] == s.sequences_per_step == 8
    assert trl["per_device_train_batch_size"] * trl["gradient_accumulation_steps"] == 8
    assert trl["per_device_train_batch_size"] == ours["loss"].micro_batch_size == (micro_batch_size or 8)
    assert trl["num_iterations"] == ours["loss"].num_iterations == 1
    # exactly L tokens per completion in both
    assert ours["sampling"].min_completion_length == ours["sampling"].max_completion_length == 24
    assert trl["max_completion_length"] == trl["generation_kwargs"]["min_new_tokens"] == 24
    assert trl["generation_kwargs"]["suppress_tokens"] == [5, 7]
    pairs = [
        ("sampling.num_generations", "num_generations"),
        ("sampling.temperature", "temperature"),
        ("sampling.top_p", "top_p"),
        ("loss.beta", "beta"),
        ("loss.epsilon_low", "epsilon"),
        ("loss.loss_type", "loss_type"),
        ("loss.scale_rewards", "scale_rewards"),
        ("loss.max_grad_norm", "max_grad_norm"),
        ("gradient_checkpointing", "gradient_checkpointing"),
    ]
    for ours_key, trl_key in pairs:
        group, _, name = ours_key.rpartition(".")
        value = getattr(ours[group], name) if group else ours[name]
        assert value == trl[trl_key], (ours_key, trl_key)
    assert ours["sampling"].top_k is None and trl["top_k"] == 0  # both: no top-k filtering
    adamw = s.adamw_kwargs()
    assert (adamw["lr"], adamw["betas"], adamw["eps"], adamw["weight_decay"]) == (
        trl["learning_rate"],
        (trl["adam_beta1"], trl["adam_beta2"]),
        trl["adam_epsilon"],
        trl["weight_decay"],
    )
    assert trl["optim"] == "adamw_torch" and trl["lr_scheduler_type"] == "constant" and trl["warmup_steps"] == 0
    assert ours["lr_scheduler"] is None and ours["loss"].epsilon_high is None
    assert trl["bf16"] is False and trl["fp16"] is False and ours["dtype"] == "float32"
    assert trl["use_cpu"] is True and trl["model_init_kwargs"]["dtype"] == "float32"
    assert ours_precision(s) == "32-true"
    assert ours["attn_implementation"] == trl["model_init_kwargs"]["attn_implementation"] == "sdpa"
    assert trl["shuffle_dataset"] is False and trl["use_vllm"] is False and trl["report_to"] == []
    assert trl["max_steps"] == s.total_steps
    assert len(mapping_table(s)) > 10


def test_gpu_bf16_settings_reach_both_trainers_alike():
    """--device cuda --dtype bfloat16: both load bf16 weights, run under bf16 autocast on the GPU, and keep the
    rest of the mapping."""
    s = BenchSettings(device="cuda", dtype="bfloat16", model_shape="internvl3-1b")
    ours = ours_module_kwargs(s, "/m")
    trl = trl_config_kwargs(s, "/out", [5])
    assert ours["dtype"] == trl["model_init_kwargs"]["dtype"] == "bfloat16"
    assert ours_precision(s) == "bf16-mixed"  # autocast over bf16 weights, as accelerate's bf16 in TRL
    assert trl["bf16"] is True and trl["fp16"] is False and trl["use_cpu"] is False
    assert ours["gradient_checkpointing"] is trl["gradient_checkpointing"] is False
    cpu = trl_config_kwargs(BenchSettings(), "/out", [5])
    changed = {key for key in trl if trl[key] != cpu[key]}
    assert changed == {"use_cpu", "bf16", "model_init_kwargs"}
    checkpointed = dataclasses.replace(s, gradient_checkpointing=True)
    ours, trl = ours_module_kwargs(checkpointed, "/m"), trl_config_kwargs(checkpointed, "/out", [5])
    assert ours["gradient_checkpointing"] is trl["gradient_checkpointing"] is True
    assert trl["gradient_checkpointing_kwargs"] == {"use_reentrant": False}  # ours is non-reentrant too
    row = dict((name, (a, b)) for name, a, b in mapping_table(s))["device, precision, attention"]
    assert row == (
        "cuda, dtype=bfloat16, precision=bf16-mixed, sdpa",
        "use_cpu=False, dtype=bfloat16, bf16=True, fp16=False, sdpa",
    )


def test_model_shapes():
    assert model_shape("cpu") == CPU_MODEL_SHAPE
    assert model_shape("internvl3-1b") == INTERNVL3_1B_SHAPE
    # InternVL3-1B's vision tower sees the CPU model's tiles: 448-px tiles of 14-px patches, 256 image tokens
    for key in ("image_size", "patch_size", "downsample_ratio", "max_patches"):
        assert CPU_MODEL_SHAPE[key] == INTERNVL3_1B_SHAPE[key], key
    with pytest.raises(ValueError, match="Unknown model shape 'big'"):
        model_shape("big")


def test_device_cuda_without_a_gpu_stops_before_building_anything(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: --device cuda would run the benchmark")
    with pytest.raises(SystemExit, match="no CUDA device is visible here"):
        bench.main(["--device", "cuda", "--work-dir", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []


def test_check_equal_work_accepts_identical_work():
    s = BenchSettings(prompts_per_step=2, num_generations=4, completion_length=16)
    check_equal_work(s, _run(s, min_max=False), _run(s))


@pytest.mark.parametrize(
    "trl_run, message",
    [
        ("short", "completion tokens, expected 128"),
        ("tokens", "ours trained on 1000 tokens, trl on 1001"),
        ("steps", "3 steps recorded, 4 expected"),
    ],
)
def test_check_equal_work_fails_loudly(trl_run, message):
    s = BenchSettings(prompts_per_step=2, num_generations=4, completion_length=16)
    runs = {
        "short": _run(s, completion_lengths=[16] * 7 + [3]),
        "tokens": _run(s, trained=1001),
        "steps": _run(s, num_steps=3),
    }
    with pytest.raises(UnequalWorkError, match=re.escape(message)):
        check_equal_work(s, _run(s), runs[trl_run])


def test_check_equal_work_reads_min_and_max_lengths():
    s = BenchSettings(prompts_per_step=1, num_generations=2, completion_length=8)
    lopsided = _run(s, completion_lengths=[6, 10])  # the right total, but not L each
    with pytest.raises(UnequalWorkError, match="min_completion_length 6, expected 8"):
        check_equal_work(s, _run(s), lopsided)


def test_summary_and_last_line():
    s = BenchSettings(warmup_steps=1, measured_steps=3)
    ours = [_run(s), _run(s)]
    trl = [_run(s), _run(s)]
    for run in trl:
        run["peak_rss_mib"] = 1600.0
        for step in run["steps"]:
            step["wall_s"] *= 4
    o, t = bench.summarize(ours, skip=1), bench.summarize(trl, skip=1)
    assert (o["wall_s"], o["in_step_s"], o["steps"]) == (3.0, 2.5, 6)  # medians of steps 2-4 of both runs
    assert t["wall_s"] == 12.0
    line = bench.ratio_line(o, t)
    assert line == "ratio_step_time=0.250 ratio_peak_rss=0.625"
    assert re.fullmatch(r"ratio_step_time=\d+\.\d{3} ratio_peak_rss=\d+\.\d{3}", line)
    assert o["peak_gpu_mib"] is None  # a CPU run


def test_last_line_on_a_gpu_adds_peak_gpu_memory():
    s = BenchSettings(warmup_steps=1, measured_steps=3, device="cuda", dtype="bfloat16")
    ours, trl = [_run(s), _run(s)], [_run(s), _run(s)]
    for run, gpu in zip(ours + trl, (3000.0, 3500.0, 9000.0, 10000.0), strict=True):
        run["peak_gpu_mib"] = gpu
    o, t = bench.summarize(ours, skip=1), bench.summarize(trl, skip=1)
    assert (o["peak_gpu_mib"], t["peak_gpu_mib"]) == (3500.0, 10000.0)  # the largest peak of each trainer's runs
    assert bench.ratio_line(o, t) == "ratio_step_time=1.000 ratio_peak_rss=1.000 ratio_peak_gpu_memory=0.350"
    o["stages"], o["parameters"], o["vision_parameters"] = {"rollout": 1.0}, 10, 4
    o["others_share"] = t["others_share"] = 0.0
    text = bench.report(s, {"ours": o, "trl": t}, elapsed=10.0)
    assert "| peak GPU MiB |" in text and "| 3500" in text and "| 10000" in text
    assert text.splitlines()[-1] == "ratio_step_time=1.000 ratio_peak_rss=1.000 ratio_peak_gpu_memory=0.350"


def test_sweep_points():
    s = BenchSettings(prompts_per_step=2, num_generations=4, completion_length=32)
    points = [(axis, p.num_generations, p.completion_length, p.micro_batch) for axis, p in sweep_settings(s)]
    assert points == [
        ("G", 2, 32, 4),
        ("G, L", 4, 32, 8),  # the given point belongs to both series, and is run once
        ("G", 8, 32, 8),  # 16 and 32 sequences go in passes of 8 in both trainers
        ("G", 16, 32, 8),
        ("L", 4, 16, 8),
        ("L", 4, 64, 8),
        ("L", 4, 128, 8),
    ]
    given = sweep_settings(dataclasses.replace(s, micro_batch_size=4))
    assert {p.micro_batch for _, p in given} == {4}
    with pytest.raises(ValueError, match="must divide"):
        sweep_settings(BenchSettings(prompts_per_step=1, num_generations=4, micro_batch_size=4))


def test_format_table():
    table = format_table(("a", "bb"), [(1, "x"), ("long", 2.5)])
    assert table.splitlines() == ["| a    | bb  |", "|------|-----|", "| 1    | x   |", "| long | 2.5 |"]


def test_trl_reward_is_our_format_reward_on_message_completions():
    good = "<think>a</think><answer>b</answer><explain>c</explain>"
    completions = [[{"role": "assistant", "content": good}], [{"role": "assistant", "content": "no tags"}]]
    assert trl_format_reward(completions, solution=["", ""]) == [1.0, 0.0]
    assert trl_format_reward.__name__ == "format"


def test_others_share_of_the_machine():
    # 2 cores for 10 s = 20 CPU-seconds; the machine was busy 15, of which 12 were ours: others took 15%
    assert others_share(15.0, 12.0, 10.0, cores=2) == pytest.approx(0.15)
    assert others_share(11.0, 12.0, 10.0, cores=2) == 0.0  # counter granularity: never negative
    assert others_share(0.0, 5.0, 10.0, cores=2) == 0.0  # unreadable counters
    assert busy_warning(0.05) == []
    assert busy_warning(0.3)[0].startswith("warning: other processes used up to 30% of the CPUs")
