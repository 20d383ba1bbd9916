"""Print scalars from a TensorBoard run: ``python scripts/tb_scalars.py LOGDIR [--tags train/reward ...]``.

For checking a run from the shell (or CI) without starting TensorBoard: one line per tag with the
number of points, the first and last values, and the means of the first and last quarter of the run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def read_scalars(logdir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """All scalar series under ``logdir``, as (step, value) lists.

    Each folder of event files is read as TensorBoard reads a run: its files in order, so that a resumed run's
    ``purge_step`` hides the steps a killed run had logged past its checkpoint.
    """
    series: dict[str, list[tuple[int, float]]] = {}
    folders = sorted({path.parent for path in Path(logdir).rglob("events.out.tfevents.*")})
    if not folders:
        raise FileNotFoundError(f"{logdir}: no TensorBoard event files found.")
    for folder in folders:
        accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            series.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return {tag: sorted(points) for tag, points in series.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir", help="a run folder, e.g. lightning_logs/demo/version_0")
    parser.add_argument("--tags", nargs="*", default=None, help="tags to show (default: all)")
    args = parser.parse_args()
    series = read_scalars(args.logdir)
    for tag in args.tags or sorted(series):
        points = series.get(tag)
        if not points:
            print(f"{tag}: no points")
            continue
        values = [v for _, v in points]
        quarter = max(len(values) // 4, 1)
        first, last = sum(values[:quarter]) / quarter, sum(values[-quarter:]) / quarter
        print(
            f"{tag}: {len(values)} points, steps {points[0][0]}..{points[-1][0]}, first {values[0]:.4f}, "
            f"last {values[-1]:.4f}, first-quarter mean {first:.4f}, last-quarter mean {last:.4f}"
        )


if __name__ == "__main__":
    main()
