"""The benchmarks, the GPU check and the README's screenshots run as files (``python benchmarks/bench_vs_trl.py``)
from any folder, not only as modules from the repository root (``python -m benchmarks.bench_vs_trl``, which the
benchmarks' own tests use)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT

SCRIPTS = sorted(ROOT.glob("benchmarks/bench_*.py")) + [
    ROOT / "scripts" / name for name in ("gpu_check.py", "screenshots.py")
]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_a_script_runs_as_a_file_from_another_folder(script, tmp_path):
    done = subprocess.run(
        [sys.executable, str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("usage: "), done.stdout[:500]
