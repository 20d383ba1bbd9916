"""Print scalars from TensorBoard runs: ``python scripts/tb_scalars.py LOGDIR [--tags train/reward ...]``.

For checking a run from the shell (or CI) without starting TensorBoard: one line per tag with the number of points,
the first and last values, and the means of the first and last quarter of the run. ``LOGDIR`` is a run's version
folder (``lightning_logs/demo/version_0``), a run name's folder (``lightning_logs/demo``) or any folder above runs:
each run (each folder of event files: a version, or an evaluation inside one, ``version_0/validate/version_0``) is
printed on its own under its folder's name, never merged with another.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

Series = dict[str, list[tuple[int, float]]]


def event_folders(logdir: str | Path) -> list[Path]:
    """Every folder under ``logdir`` (itself included) that holds event files, in name order."""
    folders = sorted({path.parent for path in Path(logdir).rglob("events.out.tfevents.*")})
    if not folders:
        raise FileNotFoundError(f"{logdir}: no TensorBoard event files found.")
    return folders


def read_run(folder: str | Path) -> Series:
    """The scalar series of one run, the event files of ``folder`` (not of its subfolders), as (step, value) lists.

    The files are read as TensorBoard reads a run: in order, so that a resumed run's ``purge_step`` hides the steps a
    killed run had logged past its checkpoint.
    """
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    tags = accumulator.Tags()["scalars"]
    return {tag: sorted((e.step, e.value) for e in accumulator.Scalars(tag)) for tag in tags}


def read_runs(logdir: str | Path) -> dict[str, Series]:
    """Each run under ``logdir`` on its own, by its folder relative to ``logdir`` (``.`` for ``logdir`` itself)."""
    return {folder.relative_to(logdir).as_posix(): read_run(folder) for folder in event_folders(logdir)}


def read_scalars(logdir: str | Path) -> Series:
    """The scalar series of the one run in ``logdir``: the event files of ``logdir`` itself when it has some (a
    version folder; an evaluation logged inside it is another run), else of the one folder below that has some.

    Raises:
        FileNotFoundError: no event files under ``logdir``.
        ValueError: no event files in ``logdir`` itself and several runs below it (never merged: name one, or use
            :func:`read_runs`).
    """
    folders = event_folders(logdir)
    if Path(logdir) in folders:
        return read_run(logdir)
    if len(folders) > 1:
        names = ", ".join(folder.relative_to(logdir).as_posix() for folder in folders)
        raise ValueError(f"{logdir} holds {len(folders)} runs ({names}); name one of them.")
    return read_run(folders[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir", help="a run's version folder or any folder above runs, e.g. lightning_logs/demo")
    parser.add_argument("--tags", nargs="*", default=None, help="tags to show (default: all)")
    args = parser.parse_args()
    runs = read_runs(args.logdir)
    for name, series in runs.items():
        print(f"== {Path(args.logdir, name).as_posix() if name != '.' else args.logdir}")
        for line in summary_lines(series, args.tags):
            print(line)


def summary_lines(series: Series, tags: list[str] | None = None) -> list[str]:
    """One line per tag (``tags``, or every tag of the run in name order)."""
    lines = []
    for tag in tags or sorted(series):
        points = series.get(tag)
        if not points:
            lines.append(f"{tag}: no points")
            continue
        values = [v for _, v in points]
        quarter = max(len(values) // 4, 1)
        first, last = sum(values[:quarter]) / quarter, sum(values[-quarter:]) / quarter
        lines.append(
            f"{tag}: {len(values)} points, steps {points[0][0]}..{points[-1][0]}, first {values[0]:.4f}, "
            f"last {values[-1]:.4f}, first-quarter mean {first:.4f}, last-quarter mean {last:.4f}"
        )
    return lines


if __name__ == "__main__":
    main()
