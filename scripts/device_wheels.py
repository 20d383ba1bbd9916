"""Fill ``.whl/`` with the wheels a lent GPU machine lacks for ``scripts/gpu_check.py`` and
``benchmarks/bench_vs_trl.py``, at the versions installed here.

    .venv/bin/python scripts/device_wheels.py [--dest .whl] [--without-bench]

The device image (Python 3.12 with torch, transformers, lightning, peft, accelerate, pandas, pyarrow, psutil ...;
see /work/.library/device/KINDS.md) has no DeepSpeed, jsonargparse, pydantic, TRL, datasets, dill or multiprocess,
and an older transformers. This downloads them for CPython 3.12 on manylinux x86-64, pinned to the versions of this
environment so both machines run the same code, builds DeepSpeed's wheel from its sdist (DeepSpeed publishes none),
keeps one version of each, and checks that the folder fits the device's 64 MiB transfer limit. There, before the
check:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \\
        .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD

and name ``.whl`` in the run's ``carry`` (add ``/.whl/`` to ``.git/info/exclude`` once).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

#: What the GPU check needs beyond the device image: DeepSpeed and its pydantic, our CLI's jsonargparse, and the
#: transformers version we test with.
CHECK_PACKAGES = (
    "transformers",
    "regex",
    "deepspeed",
    "hjson",
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "jsonargparse",
    "docstring-parser",
    "typeshed-client",
)
#: What TRL's GRPOTrainer needs beyond those and the image (which has accelerate, pandas, pyarrow, xxhash, psutil).
BENCH_PACKAGES = ("trl", "datasets", "dill", "multiprocess")
#: Packages published as sdists only: built here into a pure-Python wheel.
SDIST_ONLY = ("deepspeed",)
#: The device machine's interpreter and platform tags.
PYTHON_VERSION = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
#: The device's limit on what travels (working tree + carried paths), with room left for the working tree.
LIMIT_MIB = 64
WORKING_TREE_ALLOWANCE_MIB = 8


def pinned(names: tuple[str, ...]) -> list[str]:
    """``name==version`` for each package as installed in this environment (stops when one is missing)."""
    missing, pins = [], []
    for name in names:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            missing.append(name)
    if missing:
        sys.exit(
            f"Not installed here: {', '.join(missing)}. Run from the project's environment with the bench extra "
            "(.venv/bin/pip install -e '.[bench]'), or pass --without-bench."
        )
    return pins


def wheel_name(path: Path) -> str:
    """The normalised distribution name of a wheel file (``pydantic_core-2.50.5-...whl`` -> ``pydantic-core``)."""
    return re.sub(r"[-_.]+", "-", path.name.split("-")[0]).lower()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", default=".whl", help="the folder to fill (default: .whl)")
    parser.add_argument("--without-bench", action="store_true", help="only what scripts/gpu_check.py needs")
    args = parser.parse_args(argv)
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    names = CHECK_PACKAGES + (() if args.without_bench else BENCH_PACKAGES)
    pins = pinned(names)
    binary = [p for p in pins if p.split("==")[0] not in SDIST_ONLY]
    source = [p for p in pins if p.split("==")[0] in SDIST_ONLY]
    pip = [sys.executable, "-m", "pip"]
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    subprocess.run(
        [*pip, "download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version", PYTHON_VERSION]
        + ["--implementation", "cp", *platforms, "--dest", str(dest), *binary],
        check=True,
    )
    if source:
        # DeepSpeed's setup.py imports torch: build against this environment's torch (the wheel is pure Python).
        subprocess.run(
            [*pip, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(dest), *source],
            check=True,
        )
    wanted = {p.split("==")[0]: p.split("==")[1] for p in pins}
    for wheel in sorted(dest.glob("*.whl")):
        name, wheel_version = wheel_name(wheel), wheel.name.split("-")[1]
        if name not in wanted or wanted[name] != wheel_version:
            print(f"removing {wheel.name}: not one of the pinned wheels (two versions of one package stop the install)")
            wheel.unlink()
    wheels = sorted(dest.glob("*.whl"))
    found = {wheel_name(w) for w in wheels}
    if found != set(wanted):
        sys.exit(f"Missing wheels in {dest}: {', '.join(sorted(set(wanted) - found))}")
    total = sum(w.stat().st_size for w in wheels) / 2**20
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 2**20:7.2f} MiB  {wheel.name}")
    print(f"{total:7.2f} MiB  in {len(wheels)} wheels at {dest}")
    if total > LIMIT_MIB - WORKING_TREE_ALLOWANCE_MIB:
        sys.exit(
            f"{total:.1f} MiB is more than the {LIMIT_MIB} MiB transfer limit leaves beside the working tree "
            f"({WORKING_TREE_ALLOWANCE_MIB} MiB kept for it): carry fewer packages (--without-bench)."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
