"""The TRL comparison harness's logic: settings mapping, equal-work check, statistics, the rounds' orders, the
long-lived worker protocol, the report and its ratio line.

Runs without trl (CI does not install the ``bench`` extra) and without building or loading a model: the worker
protocol runs against stand-in trainer processes that take no time per step.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import json
import re
import statistics
import subprocess
import sys
import textwrap

import pytest

from benchmarks import bench_vs_trl as bench
from benchmarks.common import StepGate, WorkerChannel, busy_warning, format_table, others_share, spread
from benchmarks.trl_baseline import UnequalWorkError, check_equal_work, trl_format_reward
from benchmarks.trl_settings import (
    TRL_LM_HEADS,
    BenchSettings,
    mapping_table,
    model_shape,
    ours_module_kwargs,
    ours_precision,
    sweep_settings,
    trl_config_kwargs,
)
from grpo_demo.models import CPU_MODEL_SHAPE, INTERNVL3_1B_SHAPE
from tests.helpers import ROOT


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
    """In a fresh interpreter where ``import trl`` fails, the harness loads without importing anything heavy, and its
    helpers run (building our option groups checks their registered choices, which imports the package's math)."""
    code = (
        "import sys; sys.modules['trl'] = None\n"  # None in sys.modules: import raises ImportError
        "import benchmarks.bench_vs_trl\n"
        "from benchmarks.trl_settings import BenchSettings, ours_module_kwargs, trl_config_kwargs\n"
        "print(sorted(m for m in ('torch', 'transformers', 'lightning', 'datasets') if m in sys.modules))\n"
        "s = BenchSettings(); trl_config_kwargs(s, 'o', []); ours_module_kwargs(s, 'm')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"  # nothing heavy at import time


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
    with pytest.raises(ValueError, match="rounds"):
        BenchSettings(rounds=0)
    s = BenchSettings(prompts_per_step=2, num_generations=4, completion_length=32)
    assert (s.sequences_per_step, s.micro_batch, s.completion_tokens_per_step) == (8, 8, 256)
    # one run per trainer: the warm-up, then every round's block
    assert BenchSettings(warmup_steps=1, measured_steps=3, rounds=3).total_steps == 10


def test_default_run_is_the_headline_operating_point():
    """No flags: G = 8, L = 128, B = 2, at least 3 rounds of at least 3 measured steps, TRL's completion-only head
    (the stock head still selectable), on the CPU model of 448-px tiles."""
    args = bench.parse_args([])
    s = bench.settings_from_args(args)
    assert (s.prompts_per_step, s.num_generations, s.completion_length) == (2, 8, 128)
    assert s.rounds >= 3 and s.measured_steps >= 3 and s.warmup_steps >= 1
    assert args.trl_lm_head == "completion-only"
    assert bench.parse_args(["--trl-lm-head", "stock"]).trl_lm_head == "stock"
    assert (s.device, s.dtype, s.model_shape) == ("cpu", "float32", "cpu")
    assert model_shape(s.model_shape)["image_size"] == 448
    assert bench.TRAINERS == ("ours", "trl", "unshared")
    given = bench.settings_from_args(bench.parse_args(["--rounds", "5", "--steps", "4", "--seed", "7"]))
    assert (given.rounds, given.measured_steps, given.seed) == (5, 4, 7)


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
    head = {mode: dict((name, b) for name, _, b in mapping_table(s, mode))["log-prob head"] for mode in TRL_LM_HEADS}
    assert head["completion-only"].startswith("completion positions only") and head["stock"].startswith("stock")


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
        ("steps", "3 steps recorded, 10 expected"),
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


def _measured(run, walls):
    """``run`` with its measured steps' wall times set to ``walls`` and split into blocks of 3 (the rounds)."""
    for step, wall in zip(run["steps"][1:], walls, strict=True):
        step["wall_s"] = wall
    run["blocks"] = [run["steps"][1 + i : 4 + i] for i in range(0, len(walls), 3)]
    return run


def test_spread_statistics_against_a_plain_computation():
    values = [3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0, 6.0]
    out = spread(values)
    ordered = sorted(values)
    median = (ordered[3] + ordered[4]) / 2

    # inclusive quartiles: linear interpolation at positions (n - 1) / 4 and 3 (n - 1) / 4 of the sorted values
    def at(position):
        low = int(position)
        return ordered[low] + (position - low) * (ordered[min(low + 1, len(ordered) - 1)] - ordered[low])

    q1, q3 = at(7 / 4), at(21 / 4)
    deviations = sorted(abs(v - median) for v in values)
    assert out == pytest.approx(
        {
            "median": median,
            "min": 1.0,
            "max": 9.0,
            "q1": q1,
            "q3": q3,
            "iqr": q3 - q1,
            "mad": (deviations[3] + deviations[4]) / 2,
        }
    )
    assert spread([2.5]) == {"median": 2.5, "min": 2.5, "max": 2.5, "q1": 2.5, "q3": 2.5, "iqr": 0.0, "mad": 0.0}
    with pytest.raises(ValueError, match="at least one"):
        spread([])


def test_summary_and_last_line():
    s = BenchSettings(warmup_steps=1, measured_steps=3, rounds=3)
    ours = _measured(_run(s), [3.0, 2.0, 4.0, 3.5, 2.5, 3.0, 9.0, 3.0, 1.0])
    trl = _measured(_run(s), [12.0, 11.0, 13.0, 12.0, 12.5, 11.5, 12.0, 14.0, 10.0])
    trl["peak_rss_mib"] = 1600.0
    ours["steps"][0]["wall_s"] = 100.0  # the warm-up step is left out
    o, t = bench.summarize(ours, skip=1), bench.summarize(trl, skip=1)
    assert o["steps"] == 9 and o["wall_s"] == 3.0 and t["wall_s"] == 12.0
    assert (o["wall"]["min"], o["wall"]["max"]) == (1.0, 9.0)
    assert o["round_medians"] == [3.0, 3.0, 3.0]
    assert o["in_step_s"] == statistics.median(0.5 + i for i in range(1, 10))
    line = bench.ratio_line(o, t)
    assert line == "ratio_step_time=0.250 ratio_peak_rss=0.625"
    assert re.fullmatch(r"ratio_step_time=\d+\.\d{3} ratio_peak_rss=\d+\.\d{3}", line)
    assert o["peak_gpu_mib"] is None  # a CPU run


def _summaries(s, gpu=None):
    runs = {
        "ours": _measured(_run(s), [3.0] * 9),
        "trl": _measured(_run(s), [12.0] * 9),
        "unshared": _measured(_run(s), [6.0] * 9),
    }
    for kind, run in runs.items():
        run["peak_rss_mib"] = {"ours": 1000.0, "trl": 2500.0, "unshared": 1200.0}[kind]
        if gpu:
            run["peak_gpu_mib"] = gpu[kind]
        if kind != "trl":
            run["parameters"], run["vision_parameters"] = 10, 4
            for step in run["steps"]:
                step["stages"] = {stage: 0.5 for stage in bench.OURS_STAGES}
    summary = {kind: bench.summarize(run, skip=1) for kind, run in runs.items()}
    return summary


def test_report_separates_framework_from_sharing_and_ends_with_the_ratio_line():
    s = BenchSettings(warmup_steps=1, measured_steps=3, rounds=3)
    text = bench.report(s, _summaries(s), elapsed=10.0)
    lines = text.splitlines()
    assert lines[-1] == "ratio_step_time=0.250 ratio_peak_rss=0.400"  # ours (shared) against TRL
    assert "framework (ours sharing off / TRL, the same work): 0.500; sharing (ours / ours sharing off): 0.500" in text
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ")}
    assert set(rows) >= {"ours (grpo_lightning)", "ours, sharing off", "trainer"}
    assert "| 3.00 " in rows["ours (grpo_lightning)"] and "3.00-3.00" in rows["ours (grpo_lightning)"]
    assert re.search(r"\| 3\.00 3\.00 3\.00 +\|", rows["ours (grpo_lightning)"])  # the round medians
    assert "| 6.00 " in rows["ours, sharing off"]
    assert sum("median seconds per stage: rollout 0.50 s" in line for line in lines) == 2  # both of ours
    assert not any(line.startswith("warning:") for line in lines)


def test_last_line_on_a_gpu_adds_peak_gpu_memory():
    s = BenchSettings(warmup_steps=1, measured_steps=3, rounds=3, device="cuda", dtype="bfloat16")
    summary = _summaries(s, gpu={"ours": 3500.0, "trl": 10000.0, "unshared": 4000.0})
    assert bench.ratio_line(summary["ours"], summary["trl"]).endswith(" ratio_peak_gpu_memory=0.350")
    text = bench.report(s, summary, elapsed=10.0)
    assert "peak GPU MiB |" in text and "| 3500" in text and "| 10000" in text
    assert text.splitlines()[-1] == "ratio_step_time=0.250 ratio_peak_rss=0.400 ratio_peak_gpu_memory=0.350"


def test_round_orders_are_seeded_shuffles():
    orders = bench.round_orders(bench.TRAINERS, 6, seed=0)
    assert len(orders) == 6 and all(sorted(order) == sorted(bench.TRAINERS) for order in orders)
    assert bench.round_orders(bench.TRAINERS, 6, seed=0) == orders  # the same seed, the same orders
    assert len({tuple(order) for order in orders}) > 1  # shuffled, not one fixed order
    seeds = [bench.round_orders(bench.TRAINERS, 6, seed=seed) for seed in range(5)]
    assert len({str(order) for order in seeds}) > 1  # the seed matters
    assert {order[0] for order in bench.round_orders(bench.TRAINERS, 30, seed=1)} == set(bench.TRAINERS)


class _FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_step_gate_pauses_after_each_block_and_times_steps_without_the_pauses():
    clock = _FakeClock()
    commands = io.StringIO(json.dumps({"command": "run", "steps": 2}) + "\n" + json.dumps({"command": "finish"}) + "\n")
    replies = io.StringIO()
    paused = []
    gate = StepGate(WorkerChannel(commands, replies), warmup_steps=1, clock=clock, on_pause=lambda: paused.append(1))

    def step(seconds, pause_for=0.0):
        clock.now += seconds
        original = gate.channel.receive

        def receive():  # the harness answers after ``pause_for`` seconds: they must not count in the next step
            clock.now += pause_for
            return original()

        gate.channel.receive = receive
        gate.step_done({"n": gate.steps_done})

    gate.begin()
    step(5.0, pause_for=100.0)  # the warm-up, then a pause
    step(2.0)
    step(3.0, pause_for=50.0)  # the block of 2, then a pause, then finish: no more pauses
    step(4.0)
    messages = [json.loads(line) for line in replies.getvalue().splitlines()]
    assert [m["event"] for m in messages] == ["paused", "paused"]
    assert [step["wall_s"] for step in messages[0]["steps"]] == [5.0]
    assert [step["wall_s"] for step in messages[1]["steps"]] == [2.0, 3.0]  # the 100 s pause left out
    assert [step["wall_s"] for step in gate.pending] == [4.0]  # after finish: kept for the final report
    assert len(paused) == 2


def test_step_gate_rejects_unknown_commands_and_pauses_first_without_warmup():
    replies = io.StringIO()
    gate = StepGate(WorkerChannel(io.StringIO('{"command": "jump"}\n'), replies), warmup_steps=0)
    with pytest.raises(RuntimeError, match="Unknown worker command"):
        gate.begin()
    assert json.loads(replies.getvalue()) == {"event": "paused", "steps": []}
    with pytest.raises(RuntimeError, match="stdin closed"):
        StepGate(WorkerChannel(io.StringIO(""), io.StringIO()), warmup_steps=0).begin()


#: A stand-in trainer for the protocol tests: the real ``StepGate`` and ``WorkerChannel`` around a loop that "trains"
#: ``total_steps`` steps of B x G x L tokens each, in no time, and reports a peak RSS of its own.
FAKE_WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    from benchmarks.common import StepGate, WorkerChannel
    from benchmarks.trl_settings import settings_from_json
    kind, spec_path = sys.argv[1], sys.argv[2]
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    print("trainer output that must not reach the protocol")
    spec = json.load(open(spec_path))
    s = settings_from_json(spec["settings"])
    if kind == spec.get("fail"):
        sys.exit("the {} trainer broke".format(kind))
    gate = StepGate(WorkerChannel(sys.stdin, replies), s.warmup_steps)
    gate.begin()
    for i in range(s.total_steps):
        time.sleep(0.002 if kind == "trl" else 0.001)
        gate.step_done({"in_step_s": 0.0, "completion_tokens": s.completion_tokens_per_step,
                        "trained_tokens": 1000 + i + (kind == spec.get("unequal")),
                        "min_completion_length": None, "max_completion_length": None,
                        **({"stages": dict.fromkeys(("rollout", "reward", "reference", "update"), 0.1)}
                           if kind != "trl" else {})})
    gate.channel.send({"event": "done", "steps": gate.pending, "peak_rss_mib": len(kind) * 100.0,
                       "peak_gpu_mib": None, **({"parameters": 10, "vision_parameters": 4} if kind != "trl" else {})})
    """
)


@pytest.fixture
def fake_workers(tmp_path, monkeypatch):
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER, encoding="utf-8")
    monkeypatch.setattr(bench, "worker_command", lambda kind, spec_path: [sys.executable, str(script), kind, spec_path])
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    return tmp_path


def test_compare_runs_warmed_up_workers_in_shuffled_rounds(fake_workers, capsys):
    s = BenchSettings(prompts_per_step=1, num_generations=2, completion_length=4, warmup_steps=1, measured_steps=3)
    summary = bench.compare(s, {}, fake_workers, "t", quiet_wait=0)
    out = capsys.readouterr().out
    printed = re.findall(r"round (\d)/3, order: (.*)", out)
    orders = bench.round_orders(bench.TRAINERS, 3, s.seed)
    assert [(int(r), order.split(", ")) for r, order in printed] == [(i + 1, o) for i, o in enumerate(orders)]
    # the blocks were asked of the trainers in that order
    blocks = re.findall(r"^\s+(\w+): steps \[", out, flags=re.MULTILINE)
    assert blocks == [kind for order in orders for kind in order]
    assert set(summary) == set(bench.TRAINERS)
    for kind in bench.TRAINERS:
        assert summary[kind]["steps"] == 9 and len(summary[kind]["round_medians"]) == 3
        assert summary[kind]["peak_rss_mib"] == len(kind) * 100.0  # each process's own report
    assert summary["ours"]["stages"]["rollout"] == pytest.approx(0.1) and "stages" not in summary["trl"]
    log = (fake_workers / "log-t-ours.txt").read_text(encoding="utf-8")
    assert "trainer output that must not reach the protocol" in log


def test_compare_stops_on_unequal_work_and_on_a_failed_worker(fake_workers):
    s = BenchSettings(prompts_per_step=1, num_generations=2, completion_length=4, warmup_steps=1, measured_steps=1)
    with pytest.raises(UnequalWorkError, match="step 0: unshared trained on 1001 tokens, trl on 1000"):
        bench.compare(s, {"unequal": "unshared"}, fake_workers, "u", quiet_wait=0)
    with pytest.raises(bench.WorkerFailed, match="The trl trainer failed: expected 'paused', got exit code 1"):
        bench.compare(s, {"fail": "trl"}, fake_workers, "f", quiet_wait=0)


def test_sweep_runs_ours_and_trl_once_per_point(fake_workers, capsys):
    s = BenchSettings(prompts_per_step=1, num_generations=8, completion_length=128, measured_steps=2, rounds=1)
    table = bench.run_sweep(s, {}, fake_workers, quiet_wait=0)
    rows = [line.split("|")[1:-1] for line in table.splitlines()[2:]]
    assert [(row[1].strip(), row[2].strip()) for row in rows] == [
        (str(p.num_generations), str(p.completion_length)) for _, p in sweep_settings(s)
    ]
    assert all(row[5].strip() == "0.1/0.1/0.1/0.1" for row in rows)  # our stage medians
    assert all(0 < float(row[7]) < 10 for row in rows)  # ours / TRL
    assert "unshared" not in capsys.readouterr().out  # the sweep times ours and TRL only


def test_sweep_points():
    s = BenchSettings(prompts_per_step=2, num_generations=8, completion_length=128)
    points = [(axis, p.num_generations, p.completion_length, p.micro_batch) for axis, p in sweep_settings(s)]
    assert points == [
        ("G", 2, 128, 4),
        ("G", 4, 128, 8),
        ("G, L", 8, 128, 8),  # the given point belongs to both series, and is run once; 16 sequences in passes of 8
        ("G", 16, 128, 8),
        ("L", 8, 32, 8),
        ("L", 8, 256, 8),
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
