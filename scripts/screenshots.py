"""Screenshots of the rollout browser, an evaluation report and TensorBoard, for the README, from a demo run.

    python scripts/screenshots.py [RUN] [--out docs]    # or: make screenshots

``RUN`` is a run's log folder (default: the newest ``lightning_logs/demo/version_*``; ``make demo`` makes one); the
pictures name it as the repository root does. The script writes, in ``--out``:

- ``rollout_browser.png``: ``python -m grpo_lightning.report --rollouts RUN``, at the run's last logged step;
- ``evaluation_report.png``: ``python -m grpo_lightning predict`` with the run's ``checkpoints/last.ckpt`` on the
  demo's validation split, then ``python -m grpo_lightning.evaluate --html`` on those predictions;
- ``tensorboard.png``: TensorBoard's scalars page over the run, the reward, its components, the groups without a
  spread, the completion length and the validation's accuracy, format and CIDEr-D (TensorBoard runs on a free
  local port while the script runs).

Everything runs offline, on the CPU, with Debian's headless ``chromium`` (``apt-get install -y chromium``) and the
Python that runs this script (its environment must have the package and TensorBoard: ``.venv``). Run it from any
folder; the pages and predictions are made in a temporary folder, so the run's own folder is left as it was. Each
PNG is kept under :data:`MAX_BYTES` (fewer colours when it would be larger).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

#: The largest a screenshot may be, in bytes, before it is written with fewer colours.
MAX_BYTES = 300_000

#: The scalars TensorBoard's page shows (a regular expression over the tags).
TENSORBOARD_TAGS = (
    r"train/(reward$|rewards/|frac_reward_zero_std|completion_length/mean)"
    r"|val/(accuracy|rewards/format|unfiltered/CIDEr)$"
)

#: TensorBoard's colour for a run's lines, by which the script sees that the charts have been drawn.
TENSORBOARD_LINE = (255, 112, 67)


def newest_run(root: Path) -> Path:
    """The newest ``version_*`` folder of the demo runs under ``root`` (``lightning_logs/demo``)."""
    runs = sorted(root.glob("version_*"), key=lambda path: path.stat().st_mtime)
    if not runs:
        raise SystemExit(f"error: no run in {root}; make one with `make demo` or give a run's log folder.")
    return runs[-1]


def chromium_screenshot(url: str, path: Path, size: tuple[int, int], profile: Path, budget_ms: int = 5000) -> None:
    """Headless Chromium's screenshot of ``url`` in a ``size`` window, after ``budget_ms`` of the page's time."""
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("error: no `chromium` on PATH; install Debian's (`apt-get install -y chromium`).")
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars"]
    command += [
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={budget_ms}",
        f"--window-size={size[0]},{size[1]}",
    ]
    done = subprocess.run([*command, f"--screenshot={path}", url], capture_output=True, text=True, timeout=180)
    if done.returncode != 0 or not path.is_file():
        raise SystemExit(f"error: chromium could not take a screenshot of {url}:\n{done.stderr[-2000:]}")


def keep_small(path: Path, limit: int = MAX_BYTES) -> int:
    """Write the PNG at ``path`` again, optimised, with 256 colours if it is still over ``limit`` bytes; its size."""
    with Image.open(path) as image:
        image = image.convert("RGB")
    image.save(path, optimize=True)
    if path.stat().st_size > limit:
        image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path.stat().st_size


def run_python(*args: str, cwd: Path = ROOT) -> None:
    """``python ARGS`` in ``cwd`` (the repository root), with this script's Python and this repository's package
    first on its path (whatever the environment has installed); stops the script if it fails."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: `python {' '.join(args)}` failed:\n{done.stderr[-3000:]}")


def rollout_browser(run: Path, work: Path, out: Path) -> Path:
    """The rollout browser of ``run`` at its last logged step, with the charts over the steps in view."""
    page = work / "rollouts.html"
    run_python("-m", "grpo_lightning.report", "--rollouts", str(run), "--out", str(page))
    last = max(int(path.stem.split("=")[1]) for path in (ROOT / run / "rollouts").glob("step=*.jsonl"))
    shot = out / "rollout_browser.png"
    chromium_screenshot(f"{page.as_uri()}#step={last}", shot, (1360, 1000), work / "profile")
    return shot


def evaluation_report(run: Path, work: Path, out: Path) -> Path:
    """Predictions of the run's last checkpoint on the demo's validation split, and their evaluation report."""
    checkpoint = run / "checkpoints" / "last.ckpt"  # as the repository names it (predict runs from its root)
    if not (ROOT / checkpoint).exists():
        raise SystemExit(f"error: {checkpoint}: no such checkpoint; the demo run writes it at its end.")
    predictions, page = work / "predictions.json", work / "evaluation_report.html"
    run_python(
        "-m", "grpo_lightning", "predict", "--config", "configs/demo.yaml", "--ckpt_path", str(checkpoint),
        "--model.evaluation.predictions_file", str(predictions), "--trainer.logger", "false",
        "--trainer.default_root_dir", str(work),  # where Lightning's command line saves the config it ran
        "--trainer.enable_progress_bar", "false",
    )  # fmt: skip
    # from the predictions' folder, so that the report names the file without the temporary folder's path
    run_python(
        "-m", "grpo_lightning.evaluate", predictions.name, "--html", page.name, "--images", demo_val_images(), cwd=work
    )
    shot = out / "evaluation_report.png"
    chromium_screenshot(page.as_uri(), shot, (1360, 1420), work / "profile")
    return shot


def demo_val_images() -> str:
    """Where the demo's validation images are: ``configs/demo.yaml``'s ``data.val_image_dir``."""
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    return str(ROOT / config["data"]["val_image_dir"])


def tensorboard(run: Path, work: Path, out: Path) -> Path:
    """TensorBoard's scalars page over ``run``, once its charts have been drawn."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "tensorboard.main",
        "--logdir",
        str(run),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_scalars(f"http://127.0.0.1:{port}", server)
        query = urllib.request.quote(TENSORBOARD_TAGS, safe="")
        url = f"http://127.0.0.1:{port}/#scalars&tagFilter={query}"
        shot = out / "tensorboard.png"
        for budget_ms in (10_000, 20_000, 40_000):  # until the lines are on the page
            chromium_screenshot(url, shot, (1360, 1080), work / "profile-tensorboard", budget_ms)
            if _pixels_of(shot, TENSORBOARD_LINE) > 500:
                return shot
        raise SystemExit(f"error: TensorBoard's charts were not drawn within {budget_ms} ms (see {shot}).")
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_for_scalars(address: str, server: subprocess.Popen, timeout_s: float = 120) -> None:
    """Wait until TensorBoard answers with the run's scalar tags."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"error: TensorBoard stopped (exit status {server.returncode}).")
        try:
            with urllib.request.urlopen(f"{address}/data/plugin/scalars/tags", timeout=5) as answer:
                if json.loads(answer.read()):
                    return
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"error: TensorBoard did not serve the run's scalars within {timeout_s:.0f} s.")


def _pixels_of(path: Path, colour: tuple[int, int, int], tolerance: int = 24) -> int:
    with Image.open(path) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 24)
    return sum(n for n, pixel in colours if all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", type=Path, help="a run's log folder (default: the newest demo run)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where the PNGs go (default: %(default)s)")
    args = parser.parse_args(argv)
    run = (args.run or newest_run(ROOT / "lightning_logs" / "demo")).resolve()
    if run.is_relative_to(ROOT):  # the pages and TensorBoard name the run as the repository names it
        run = run.relative_to(ROOT)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"screenshots of {run}")
    with tempfile.TemporaryDirectory(prefix="screenshots-") as folder:
        work = Path(folder)
        for make in (rollout_browser, evaluation_report, tensorboard):
            shot = make(run, work, args.out)
            print(f"{shot}: {keep_small(shot) / 1000:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
