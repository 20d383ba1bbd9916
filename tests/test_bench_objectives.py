"""benchmarks/bench_objectives.py without training: each objective's overlay is a configuration the demo accepts, an
unknown option stops the benchmark with a message, and the table's figures and the curves' bands are computed as
written by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import bench_objectives as bench
from tests.helpers import demo_model_options


@pytest.mark.parametrize("name", list(bench.OBJECTIVES))
def test_each_objective_is_a_configuration_the_demo_accepts(name, tmp_path, capsys):
    assert not bench.unknown_options(name)
    settings = bench.overlay(name)["model"]
    assert settings["loss"]["num_iterations"] == 2  # the ratio moves, so clip, gate and cap act
    printed = demo_model_options(tmp_path, capsys, settings)
    for group, options in settings.items():
        for option, value in options.items():
            assert printed[group][option] == value, f"{name}: model.{group}.{option}"


def test_an_unknown_option_stops_the_benchmark_with_what_to_do(monkeypatch):
    monkeypatch.setitem(bench.OBJECTIVES, "bogus", {"loss": {"no_such_option": 1.0}})
    with pytest.raises(SystemExit) as stopped:
        bench.check_objectives(["grpo", "bogus"])
    message = str(stopped.value)
    assert "bogus: model.loss.no_such_option" in message and "grpo:" not in message
    assert "--objectives" in message


def test_the_run_validates_halfway_and_at_the_end(tmp_path):
    command = bench.fit_command(tmp_path / "o.yaml", tmp_path, "grpo", 1, steps=100)
    assert command[command.index("--trainer.val_check_interval") + 1] == "25"  # 50 rollouts of 2 optimizer steps
    assert command[command.index("--seed_everything") + 1] == "1"


def test_figures_of_one_run():
    ramp = [(step, float(step)) for step in range(10)]
    assert bench.final_quarter_mean(ramp) == 8.5  # the last 10 // 4 = 2 points: (8 + 9) / 2
    assert bench.final_quarter_mean(ramp[:3]) == 2.0  # fewer than 4 points: the last one
    assert bench.tail_mean(ramp, 4) == 7.5  # (6 + 7 + 8 + 9) / 4
    assert bench.tail_mean(ramp[:2], 10) == 0.5
    series = {bench.REWARD: ramp, bench.ENTROPY: ramp, bench.STEP_TIME: [(0, 0.5), (1, 1.5)], bench.ACCURACY: ramp}
    figures = bench.summarize(series)
    assert figures == {"reward": 8.5, "format": None, "val_accuracy": 9.0, "entropy": 4.5, "step_s": 1.0}


def test_figures_over_seeds():
    assert bench.mean_and_range([1.0, 2.0, 6.0]) == (3.0, 1.0, 6.0)
    assert bench.format_figure([0.5, None, 1.0], 2) == "0.75 (0.50..1.00)"
    assert bench.format_figure([0.25], 3) == "0.250"
    assert bench.format_figure([None], 3) == "n/a"
    runs = [
        {"objective": "grpo", "reward": 1.0, "format": 0.5, "val_accuracy": None, "entropy": 0.9, "step_s": 0.3},
        {"objective": "grpo", "reward": 2.0, "format": 0.7, "val_accuracy": None, "entropy": 0.7, "step_s": 0.5},
        {"objective": "grpo", "error": "exit status 1"},
    ]
    row = bench.table(runs, ["grpo"]).splitlines()[2]
    assert [cell.strip() for cell in row.strip("|").split("|")] == [
        "grpo",
        "2 (1 failed)",
        "1.500 (1.000..2.000)",
        "0.600 (0.500..0.700)",
        "n/a",
        "0.800 (0.700..0.900)",
        "0.400 (0.300..0.500)",
    ]


def test_curves_are_smoothed_then_banded_over_seeds(tmp_path):
    assert bench.moving_mean([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    first = [(0, 0.0), (1, 2.0), (2, 4.0)]
    second = [(1, 6.0), (2, 8.0)]  # no step 0: the band keeps the steps both seeds logged
    steps, mean, low, high = bench.seed_band([first, second], window=2)
    assert steps == [1, 2]
    assert (low, high) == ([1.0, 3.0], [6.0, 7.0])  # first smoothed: 0, 1, 3; second: 6, 7
    assert mean == [3.5, 5.0]


def test_the_figure_is_drawn(tmp_path: Path):
    pytest.importorskip("matplotlib", reason="matplotlib comes with the bench extra (pip install -e '.[bench]')")
    runs = [
        {"objective": name, "curves": {bench.REWARD: [(step, step * (i + seed) / 10) for step in range(12)]}}
        for i, name in enumerate(("grpo", "sapo"))
        for seed in (0, 1)
    ]
    bench.plot_curves(runs, ["grpo", "sapo", "cispo"], tmp_path / "curves.png")  # cispo: no runs, no line
    assert (tmp_path / "curves.png").stat().st_size > 1000
