"""benchmarks/bench_async.py without training: each mode's overlay is a configuration the demo accepts, the pinning
and the options are read as written, and the figures, ratios and tables are computed as worked out by hand. A
real run of it (engine and all) is what benchmarks/RESULTS.md records."""

from __future__ import annotations

import argparse
import os

import pytest

from benchmarks import bench_async as bench
from grpo_lightning.errors import ConfigError
from tests.helpers import demo_model_options


def _args(*argv: str) -> argparse.Namespace:
    return bench.parse_args(list(argv))


@pytest.mark.parametrize("mode", list(bench.MODES))
def test_each_mode_is_a_configuration_the_demo_accepts(mode, tmp_path, capsys):
    settings = bench.overlay(mode, _args())
    assert settings["trainer"]["limit_val_batches"] == 0
    printed = demo_model_options(tmp_path, capsys, settings["model"])
    assert printed["rollout_engine"] == "vllm"
    assert printed["sampling"]["async_rollouts"] is (bench.MODES[mode] is not None)
    if bench.MODES[mode] is not None:
        assert printed["sampling"]["max_staleness"] == bench.MODES[mode]


@pytest.mark.parametrize("lora", ["merged", "adapter"])
def test_the_lora_runs_train_adapters_and_send_them_as_asked(lora, tmp_path, capsys):
    printed = demo_model_options(tmp_path, capsys, bench.overlay("k1", _args(), lora=lora)["model"])
    assert printed["lora"]["r"] == 16 and printed["vllm"]["lora_sync"] == lora


def test_the_gpu_runs_train_on_the_gpu():
    assert bench.overlay("sync", _args("--device", "cuda"))["trainer"]["accelerator"] == "gpu"
    assert "accelerator" not in bench.overlay("sync", _args())["trainer"]


def test_pinning_per_mode():
    args = _args("--pin", "k1=1/0", "sync=0-1/all")
    assert bench.pinning("k1", args) == ("1", "0")
    assert bench.pinning("sync", args) == ("0-1", "all")
    assert bench.pinning("k2", args) == bench.default_pinning("k2")
    assert bench.parse_cores("0-1") == bench.parse_cores("1,0") == {0, 1}  # the machines here have 2 cores at least
    with pytest.raises(ConfigError, match=r"^--pin '0,4096' names core 4096, and this machine has cores 0 to"):
        bench.parse_cores("0,4096")
    assert bench.parse_cores("all") == set(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    "argv, message",
    [
        (("--pin", "k9=0/1"), "--pin k9=0/1"),
        (("--pin", "k1"), "--pin k1"),
        (("--steps", "10", "--warmup", "10"), "--steps 10"),
    ],
)
def test_bad_options_stop_with_what_to_do(argv, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        _args(*argv)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_by_default_synchronous_runs_share_every_core_and_asynchronous_ones_split_them(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert bench.default_pinning("sync") == bench.default_pinning("k0") == ("0,1,2,3", "all")
    assert bench.default_pinning("k1") == bench.default_pinning("k2") == ("0,1", "2,3")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1})
    assert bench.default_pinning("k1") == ("1", "1")


def test_figures_of_one_run():
    times = {step: 100.0 + 0.5 * step for step in range(20)}
    times[3] = 500.0  # a slow warm-up step is left out
    assert bench.wall_seconds_per_step(times, warmup=10) == 0.5  # (109.5 - 105.0) / 9
    assert bench.wall_seconds_per_step({10: 1.0}, warmup=10) is None
    series = {
        bench.REWARD: [(step, float(step)) for step in range(20)],  # the last 5: 15..19, mean 17
        bench.STEP_TIME: [(step, 9.0 if step < 10 else 0.25 + step % 2) for step in range(20)],
        bench.STALENESS: [(0, 0.0), (1, 1.0), (2, 1.0), (3, 1.0)],
        bench.OVERLAP: [(10, 0.5), (11, 0.75), (12, 1.0)],
    }
    figures = bench.summarize(series, times, warmup=10)
    assert figures["reward"] == 17.0 and figures["staleness"] == 0.75 and figures["overlap"] == 0.75
    assert figures["step_time"] == 0.75  # the median of 0.25 and 1.25, alternating from step 10
    assert figures["trainer_wait"] is None and figures["sync_mb"] is None  # a synchronous run has none


def test_ratios_pair_the_modes_within_a_round():
    runs = [
        {"mode": "sync", "seed": 0, "wall_s_per_step": 2.0},
        {"mode": "k1", "seed": 0, "wall_s_per_step": 1.5},
        {"mode": "sync", "seed": 1, "wall_s_per_step": 4.0},
        {"mode": "k1", "seed": 1, "wall_s_per_step": 2.0},
        {"mode": "k1", "seed": 2, "wall_s_per_step": 1.0},  # no sync run in round 2: no ratio
        {"mode": "sync", "seed": 3, "error": "exit status 1"},
        {"mode": "k1", "seed": 3, "wall_s_per_step": 1.0},
    ]
    assert bench.ratios(runs, "k1") == [0.75, 0.5]


def _figures(value: float) -> dict[str, float]:
    return {key: value for _, key, _ in bench.COLUMNS}


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_tables():
    runs = [
        {"mode": "sync", "seed": 0, "pinning": "auto/all", **_figures(0.5), "reward": 1.0},
        {"mode": "k1", "seed": 0, "pinning": "0/1", **_figures(0.25), "reward": 2.0},
        {"mode": "sync", "seed": 1, "pinning": "auto/all", **_figures(1.5), "reward": 3.0},
        {"mode": "k1", "seed": 1, "pinning": "0/1", "error": "exit status 1"},
    ]
    sync, k1 = (_cells(line) for line in bench.table(runs, ["sync", "k1"]).splitlines()[2:])
    assert sync[:4] == ["sync", "auto/all", "2", "1.000 (0.500..1.500)"] and sync[-1] == "2.000 (1.000..3.000)"
    assert k1[:4] == ["k1", "0/1", "1 (1 failed)", "0.250"]
    seeds = [_cells(line) for line in bench.seed_table(runs, ["sync", "k1"]).splitlines()[2:]]
    assert seeds == [["0", "1.000", "2.000"], ["1", "3.000", "failed"], ["min..max", "1.000..3.000", "2.000..2.000"]]


def test_the_reward_curves_are_drawn(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib comes with the bench extra (pip install -e '.[bench]')")
    ramp = [(step, 0.01 * step) for step in range(30)]
    runs = [
        {"mode": "sync", "seed": 0, "curve": ramp},
        {"mode": "sync", "seed": 1, "curve": [(step, value + 0.1) for step, value in ramp]},
        {"mode": "k1", "seed": 0, "curve": ramp},
        {"mode": "k2", "seed": 0, "error": "exit status 1"},  # no curve: no line
    ]
    bench.plot_curves(runs, ["sync", "k1", "k2"], tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_is_logged_timed_and_its_failure_quoted(tmp_path):
    import sys

    from benchmarks.common import run_logged

    done = run_logged([sys.executable, "-c", "print('stepped')"], tmp_path / "ok.log")
    assert "error" not in done and done["wall_s"] > 0 and 0 <= done["others_share"] <= 1
    assert (tmp_path / "ok.log").read_text() == "stepped\n"
    failed = run_logged([sys.executable, "-c", "import sys; print('the end'); sys.exit(3)"], tmp_path / "bad.log")
    assert failed["error"].startswith("exit status 3; the end of") and failed["error"].endswith("the end")
