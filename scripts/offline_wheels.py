"""Gather the wheels that install grpo_lightning on a machine without network, pinned to this environment.

    python scripts/offline_wheels.py [--dest wheels] [--extra bench] [--skip torch torchvision]
                                     [--python-version 3.12] [--platform manylinux_2_28_x86_64 ...] [--list]

GPU nodes often cannot reach PyPI. Run this where the network is, from the environment you trust (``.venv``,
which ``make test`` creates), copy the folder to the GPU machine, and install from it there:

    pip install --no-index --find-links wheels 'grpo_lightning[bench]'

It follows grpo_lightning's requirements (and those of the extras named) through the installed distributions,
pins each package to the version installed here so that both machines run the same code, downloads the wheels
for the target interpreter and platform (this one's unless ``--python-version`` / ``--platform`` say
otherwise), builds a wheel for what is published as source only (DeepSpeed, built against this environment's
torch: the wheel is pure Python and compiles its ops on the target at first use), and builds grpo_lightning's own
wheel. Afterwards the folder holds exactly one wheel per package: any other file ending in ``.whl`` is removed,
since two versions of one package make ``pip install --no-index`` fail.

``--skip NAME`` leaves out a package the target already has, and whatever only that package needs: a CUDA image
with its own torch takes ``--skip torch torchvision`` (torch's CUDA wheels weigh gigabytes), and pip then keeps
that torch as long as it satisfies grpo_lightning's bounds.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, distribution, version
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "grpo-lightning"
#: Packages published as sdists only: built here into a wheel (``--build`` adds more).
SOURCE_ONLY = ("deepspeed",)
#: ``--platform`` values for a usual Linux GPU machine, when ``--python-version`` is given without one.
LINUX_X86_64 = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def normalise(name: str) -> str:
    """A distribution name as pip compares it (``Pydantic_Core`` -> ``pydantic-core``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name(path: Path) -> str:
    """The normalised distribution name of a wheel file (``pydantic_core-2.50.5-...whl`` -> ``pydantic-core``)."""
    return normalise(path.name.split("-")[0])


def marker_environment(python_version: str | None) -> dict[str, str]:
    """The values requirement markers are evaluated with: this interpreter's, or a Linux CPython of that version."""
    environment = default_environment()
    if python_version:
        environment.update(
            python_version=python_version,
            python_full_version=f"{python_version}.0",
            implementation_name="cpython",
            platform_python_implementation="CPython",
            sys_platform="linux",
            platform_system="Linux",
            os_name="posix",
        )
    return environment


def installed_requires(name: str) -> list[str]:
    """The requirement strings of an installed distribution; none for one not installed (``pinned`` reports it)."""
    try:
        return distribution(name).requires or []
    except PackageNotFoundError:
        return []


def requirement_closure(
    roots: Iterable[str],
    skip: Iterable[str] = (),
    environment: dict[str, str] | None = None,
    requires: Callable[[str], list[str]] | None = None,
) -> set[str]:
    """Every package the roots need, transitively, in the target environment, normalised.

    Args:
        roots: requirement strings to start from (``"jsonargparse[signatures]>=4.32"``).
        skip: packages to leave out, with what only they need (the walk does not enter them).
        environment: marker values of the target (default: this interpreter's).
        requires: a distribution's requirement strings by name (default: :func:`installed_requires`).

    Returns:
        The normalised names, the roots' own included and the skipped ones not.
    """
    environment = environment or marker_environment(None)
    requires = requires or installed_requires
    skipped = {normalise(name) for name in skip}
    seen: dict[str, set[str]] = {}  # name -> extras already walked
    pending = [Requirement(text) for text in roots]
    while pending:
        requirement = pending.pop()
        name = normalise(requirement.name)
        if name in skipped:
            continue
        extras = set(requirement.extras)
        if name in seen and extras <= seen[name]:
            continue
        seen.setdefault(name, set()).update(extras)
        for text in requires(name):
            child = Requirement(text)
            if child.marker is None or any(
                child.marker.evaluate({**environment, "extra": extra}) for extra in ("", *extras)
            ):
                pending.append(child)
    return set(seen)


def pinned(names: Iterable[str]) -> list[str]:
    """``name==version`` for each package as installed in this environment, without a local version label
    (``2.14.1+cu130`` -> ``2.14.1``: the index has the public one); stops when one is missing."""
    missing, pins = [], []
    for name in sorted(names):
        try:
            pins.append(f"{name}=={Version(version(name)).public}")
        except PackageNotFoundError:
            missing.append(name)
    if missing:
        sys.exit(
            f"Not installed here: {', '.join(missing)}. Run from an environment that has grpo_lightning with the "
            "extras you ask for (.venv/bin/pip install -e '.[bench]'), or leave those out with --skip."
        )
    return pins


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", default="wheels", help="the folder to fill (default: wheels)")
    parser.add_argument("--extra", nargs="*", default=[], help="grpo_lightning's extras to include (bench, dev)")
    parser.add_argument("--skip", nargs="*", default=[], help="packages the target machine already has")
    parser.add_argument("--build", nargs="*", default=list(SOURCE_ONLY), help="packages to build from source")
    parser.add_argument("--python-version", default=None, help="the target's Python, e.g. 3.12 (default: this one)")
    parser.add_argument(
        "--platform",
        nargs="*",
        default=None,
        help=f"the target's wheel platform tags (default: this machine's; "
        f"with --python-version: {' '.join(LINUX_X86_64)})",
    )
    parser.add_argument("--list", action="store_true", help="print the pinned packages and download nothing")
    return parser.parse_args(argv)


def fetch_wheels(args: argparse.Namespace, dest: Path, binary: list[str], source: list[str]) -> None:
    """Download the ``binary`` pins as wheels for the target, build the ``source`` ones here, and build
    grpo_lightning's own wheel, all into ``dest``."""
    pip = [sys.executable, "-m", "pip"]
    target: list[str] = []
    platforms = args.platform if args.platform is not None else (LINUX_X86_64 if args.python_version else ())
    if args.python_version:
        target += ["--python-version", args.python_version, "--implementation", "cp"]
    target += [arg for platform in platforms for arg in ("--platform", platform)]
    subprocess.run(
        [*pip, "download", "--quiet", "--no-deps", "--only-binary=:all:", *target, "--dest", str(dest), *binary],
        check=True,
    )
    if source:
        # DeepSpeed's setup.py imports torch: build against this environment's torch, without isolation.
        subprocess.run(
            [*pip, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(dest), *source],
            check=True,
        )
    subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dest), str(ROOT)], check=True)


def check_wheels(dest: Path, pins: list[str]) -> None:
    """Keep in ``dest`` only the pinned versions (and grpo_lightning's), stop when one is missing, and list them."""
    wanted = {p.split("==")[0]: Version(p.split("==")[1]) for p in pins}
    wanted[PROJECT] = Version(Version(version(PROJECT)).public)
    for wheel in sorted(dest.glob("*.whl")):
        name, wheel_version = wheel_name(wheel), Version(wheel.name.split("-")[1])
        if wanted.get(name) != wheel_version:
            print(f"removing {wheel.name}: not one of the pinned wheels (two versions of one package stop the install)")
            wheel.unlink()
    wheels = sorted(dest.glob("*.whl"))
    missing = set(wanted) - {wheel_name(w) for w in wheels}
    if missing:
        sys.exit(f"Missing wheels in {dest}: {', '.join(sorted(missing))}")
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 2**20:9.2f} MiB  {wheel.name}")
    total = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"{total:9.2f} MiB  in {len(wheels)} wheels at {dest}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    extras = f"[{','.join(args.extra)}]" if args.extra else ""
    names = requirement_closure(
        [f"{PROJECT}{extras}"], skip=args.skip, environment=marker_environment(args.python_version)
    )
    names.discard(PROJECT)
    pins = pinned(names)
    built = {normalise(name) for name in args.build}
    if args.list:
        print("\n".join(pins))
        return 0
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    binary = [p for p in pins if p.split("==")[0] not in built]
    source = [p for p in pins if p.split("==")[0] in built]
    fetch_wheels(args, dest, binary, source)
    check_wheels(dest, pins)
    print(f"On the target: pip install --no-index --find-links {dest} 'grpo_lightning{extras}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
