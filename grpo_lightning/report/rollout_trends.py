"""The rollout browser's "training over steps" section: per-step statistics of a run's rollout records, and their
charts, each point a link to its step.

The statistics are over the groups each step trained, as ``train/*`` in TensorBoard has them (``train/reward``,
``train/rewards/<name>``, ``train/frac_reward_zero_std``, ``train/completion_length/mean``), read back from the
records rather than from the logger, so that the page needs nothing but the run's ``rollouts/`` folder. Two
differences a reader may notice: the records' ``reward_std`` is the spread of the rewards as the round holds them
(a completion no reward scored counts in it, where the logged fraction leaves it out), and only the steps the run
wrote records of are here (every ``logging.rollouts_every_n_steps``), so the lines join those steps alone. The
groups dynamic sampling left out are counted over all the groups the step sampled.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from grpo_lightning.svg_plots import Series, is_value, line_chart

#: The link of a step's point: the browser's fragment for that step (its script keeps the other filters).
STEP_LINK = "#step={step}"


def step_statistics(steps: Sequence[dict[str, Any]], reward_names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per step of :func:`~grpo_lightning.report.rollouts_page.read_rollouts`' steps, in their order.

    Each row: ``step``; ``sampled`` and ``trained`` (groups); ``reward`` (the mean total reward of the trained groups'
    completions); ``scores`` (reward name -> the mean of its scores there, its "no opinion" left out);
    ``zero_std_trained`` (the fraction of trained groups whose rewards did not spread: they teach nothing);
    ``zero_std_sampled`` (the same over every sampled group); ``filtered`` (the fraction of sampled groups that
    dynamic sampling left out); ``length`` and ``max_length`` (the trained completions' mean and longest length, in
    tokens). A statistic with nothing to average is None.
    """
    rows = []
    for step in steps:
        groups = step["groups"]
        trained = [g for g in groups if g.get("trained")]
        completions = [c for g in trained for c in g.get("completions", [])]
        lengths = [c.get("length") for c in completions if is_value(c.get("length"))]
        rows.append(
            {
                "step": step["step"],
                "sampled": len(groups),
                "trained": len(trained),
                "reward": _mean(c.get("reward") for c in completions),
                "scores": {
                    name: _mean((c.get("scores") or {}).get(name) for c in completions) for name in reward_names
                },
                "zero_std_trained": _fraction(_zero_spread(g) for g in trained),
                "zero_std_sampled": _fraction(_zero_spread(g) for g in groups),
                "filtered": _fraction(bool(g.get("filtered")) and not g.get("trained") for g in groups),
                "length": _mean(lengths),
                "max_length": max(lengths) if lengths else None,
            }
        )
    return rows


def trends_html(rows: Sequence[dict[str, Any]], reward_names: Sequence[str]) -> str:
    """The section of charts over the steps of ``rows`` (:func:`step_statistics`); a point links to its step."""
    steps = [row["step"] for row in rows]
    links = [STEP_LINK.format(step=step) for step in steps]
    notes = [f"{row['trained']} of {row['sampled']} groups trained" for row in rows]

    def series(name: str, values: list[Any]) -> Series:
        return Series(name, values, xs=steps, links=links, notes=notes)

    common = {"x_label": "step", "width": 460, "height": 250}
    charts = [
        line_chart([series("reward", [r["reward"] for r in rows])], title="Mean reward", y_label="reward", **common),
        line_chart(
            [series(name, [r["scores"][name] for r in rows]) for name in reward_names],
            title="Mean score of each reward function",
            y_label="score",
            **common,
        ),
        line_chart(
            [
                series("trained groups", [r["zero_std_trained"] for r in rows]),
                series("sampled groups", [r["zero_std_sampled"] for r in rows]),
                *(
                    [series("left out (dynamic sampling)", [r["filtered"] for r in rows])]
                    if _any_filtered(rows)
                    else []
                ),
            ],
            title="Groups whose rewards did not spread (reward_std = 0)",
            y_label="fraction of groups",
            y_range=(0, 1),
            **common,
        ),
        line_chart(
            [series("mean", [r["length"] for r in rows]), series("longest", [r["max_length"] for r in rows])],
            title="Completion length",
            y_label="tokens",
            **common,
        ),
    ]
    figures = "".join(f"<figure class='plot'>{chart}</figure>" for chart in charts)
    return (
        "<section id='trends'><h2>Training over steps</h2><p>Over the groups each step trained, as TensorBoard's "
        f"<code>train/</code> curves, at the {len(rows)} step{'s' * (len(rows) != 1)} with records; a point's "
        f"tooltip gives its value, and a click shows that step below.</p><div class='plots'>{figures}</div></section>"
    )


def _zero_spread(group: dict[str, Any]) -> bool | None:
    std = group.get("reward_std")
    return None if not is_value(std) else float(std) == 0.0


def _mean(values: Iterable[Any]) -> float | None:
    found = [float(v) for v in values if is_value(v)]
    return sum(found) / len(found) if found else None


def _fraction(flags: Iterable[bool | None]) -> float | None:
    known = [flag for flag in flags if flag is not None]
    return sum(known) / len(known) if known else None


def _any_filtered(rows: Sequence[dict[str, Any]]) -> bool:
    return any(row["filtered"] for row in rows)


__all__ = ["STEP_LINK", "step_statistics", "trends_html"]
