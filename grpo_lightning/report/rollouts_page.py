"""The rollout browser: one page over a training run's rollout records, its command line.

At the top, charts of the run over its logged steps (:mod:`~grpo_lightning.report.rollout_trends`), each point a
link to its step; below, one step at a time, its groups and their completions (see the package's docstring for the
fragment that chooses the step and the filters)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from grpo_lightning.errors import UserError
from grpo_lightning.report.page import _e, _page, score_key, thumbnail_data_uri
from grpo_lightning.report.rollout_trends import step_statistics, trends_html
from grpo_lightning.rollout_files import ROLLOUT_FILE, ROLLOUTS_DIR


class RolloutsError(UserError):
    """A rollouts folder that is missing, empty, or holds a line that is not a rollout record."""


def find_rollout_files(log_dir: Path) -> list[tuple[int, Path]]:
    """The ``step=N.jsonl`` files of a run's log folder (or of its ``rollouts`` folder itself), by step.

    Raises:
        RolloutsError: there are none; the message says how to have a run write them.
    """
    log_dir = Path(log_dir)
    folder = (
        log_dir if log_dir.name == ROLLOUTS_DIR and not (log_dir / ROLLOUTS_DIR).is_dir() else log_dir / ROLLOUTS_DIR
    )
    files = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = re.fullmatch(ROLLOUT_FILE, path.name)
            if match and path.is_file():
                files.append((int(match.group(1)), path))
    if not files:
        raise RolloutsError(
            f"{folder}: no rollout records (step=N.jsonl); a run writes them to <log_dir>/{ROLLOUTS_DIR}/ every "
            "model.logging.rollouts_every_n_steps steps (0 writes none). Give the run's log folder, e.g. "
            "lightning_logs/demo/version_0."
        )
    return sorted(files)


def read_rollouts(log_dir: Path) -> list[dict[str, Any]]:
    """Every step's records of a run, as ``[{"step": N, "groups": [record, ...]}, ...]`` in step order.

    Raises:
        RolloutsError: no records, or a line that is not a record (named by file and line).
    """
    steps = []
    for step, path in find_rollout_files(log_dir):
        groups = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise RolloutsError(f"{path}:{lineno}: not a JSON line ({err.msg}); the file is damaged.") from None
            if not isinstance(record, dict) or not isinstance(record.get("completions"), list):
                raise RolloutsError(f"{path}:{lineno}: not a rollout record (no list of completions).")
            groups.append(record)
        steps.append({"step": step, "groups": groups})
    return steps


def _rollout_image(path: str, images_dir: Path | None) -> str | None:
    candidates = [Path(path)] if path else []
    if images_dir is not None and path:
        candidates.append(Path(images_dir) / Path(path).name)
    for candidate in candidates:
        if candidate.is_file():
            try:
                return thumbnail_data_uri(candidate)
            except (OSError, ValueError, Image.DecompressionBombError):
                return None
    return None


def _json_for_script(value: Any) -> str:
    # inside <script>, only "</script" or "<!--" could end the element early: no "<" at all
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c")


def render_rollouts(log_dir: Path, images_dir: Path | None = None, title: str | None = None) -> str:
    """The rollout browser of a run: one self-contained page over every step's records.

    Args:
        log_dir: the run's log folder (``<save_dir>/<name>/<version>``), or its ``rollouts`` folder.
        images_dir: where to look for an image, by file name, that is not at its recorded path (another machine).
        title: the page title (default: the log folder's path).

    Raises:
        RolloutsError: no records, or a damaged file.
    """
    steps = read_rollouts(log_dir)
    names = list(
        dict.fromkeys(
            name for s in steps for g in s["groups"] for c in g["completions"] for name in c.get("scores", {})
        )
    )
    paths = list(dict.fromkeys(g.get("image_path", "") for s in steps for g in s["groups"]))
    images = {path: uri for path in paths if (uri := _rollout_image(path, images_dir)) is not None}
    data = {"steps": steps, "images": images, "rewards": names, "keys": [score_key(name) for name in names]}
    title = title or f"Rollouts of {log_dir}"
    options = "".join(f"<option value='{s['step']}'>step {s['step']}</option>" for s in steps)
    components = "<option value='reward'>reward (total)</option>" + "".join(
        f"<option value='{_e(name)}'>{_e(name)}</option>" for name in names
    )
    body = (
        f"<p>{len(steps)} steps with rollout records. Completions are sorted by advantage (by "
        "reward in groups that did not train). A group is <b>trained</b>, <b>filtered</b> (its rewards did not "
        "spread; dynamic sampling left it out), <b>filled</b> (no spread, trained because the step's rounds ran "
        "out) or <b>unused</b> (a spread, beyond the step's batch). ← and → page through the steps.</p>"
        f"{trends_html(step_statistics(steps, names), names)}<h2 id='step-groups'>Groups of a step</h2>"
        "<div id='controls'><button id='prev' type='button'>← previous</button>"
        f"<select id='step'>{options}</select><button id='next' type='button'>next →</button>"
        f"<label>Reward <select id='component'>{components}</select></label>"
        "<label>from <input id='min' type='number' step='any'></label>"
        "<label>to <input id='max' type='number' step='any'></label>"
        "<label>Groups <select id='status'><option value='all'>all</option><option value='trained'>trained"
        "</option><option value='filtered'>filtered</option></select></label><span id='shown'></span></div>"
        "<div id='groups'></div>"
        f"<script type='application/json' id='rollout-data'>{_json_for_script(data)}</script>"
    )
    return _page(title, body, "rollouts")


def write_rollouts_page(
    log_dir: Path, path: Path | None = None, images_dir: Path | None = None, title: str | None = None
) -> Path:
    """Writes :func:`render_rollouts` to ``path`` (default ``<log_dir>/rollouts.html``) and returns it."""
    log_dir = Path(log_dir)
    path = Path(path) if path is not None else log_dir / "rollouts.html"
    page = render_rollouts(log_dir, images_dir, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m grpo_lightning.report --rollouts LOG_DIR [--out PAGE.html] [--images DIR]``."""
    parser = argparse.ArgumentParser(
        prog="python -m grpo_lightning.report",
        description="Make the rollout browser of a training run: one self-contained HTML page over the rollout "
        "records the run wrote every model.logging.rollouts_every_n_steps steps. (The evaluation report of a "
        "predictions file is `python -m grpo_lightning.evaluate PRED.json --html REPORT.html`.)",
    )
    parser.add_argument("--rollouts", type=Path, required=True, metavar="LOG_DIR", help="the run's log folder")
    parser.add_argument("--out", type=Path, help="the page to write (default: LOG_DIR/rollouts.html)")
    parser.add_argument("--images", type=Path, help="look here, by file name, for images not at their recorded path")
    args = parser.parse_args(argv)
    try:
        path = write_rollouts_page(args.rollouts, args.out, args.images)
    except RolloutsError as err:
        parser.exit(2, f"error: {err}\n")
    print(f"rollout browser written to {path}", file=sys.stdout)
    return 0
