"""scripts/offline_wheels.py's offline parts: the requirement walk, pins and wheel names (downloads need PyPI)."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest

from scripts import offline_wheels

#: A made-up index: requirement strings by distribution name.
REQUIRES = {
    "app": ["lib[fast]>=1", "tool; extra == 'dev'", "old-py; python_version < '3.9'", "heavy"],
    "lib": ["Common_Base", "accel; extra == 'fast'", "unused; extra == 'slow'"],
    "heavy": ["heavy-only", "common-base"],
    "tool": [],
    "accel": [],
    "common-base": [],
    "heavy-only": [],
}


def walk(roots, **kwargs):
    return offline_wheels.requirement_closure(
        roots, environment=offline_wheels.marker_environment("3.12"), requires=lambda n: REQUIRES.get(n, []), **kwargs
    )


def test_the_walk_follows_extras_and_markers():
    assert walk(["app"]) == {"app", "lib", "accel", "common-base", "heavy", "heavy-only"}
    assert walk(["app[dev]"]) == walk(["app"]) | {"tool"}


def test_a_skipped_package_takes_along_only_what_nothing_else_needs():
    assert walk(["app"], skip=["Heavy"]) == {"app", "lib", "accel", "common-base"}


def test_the_project_closure_holds_its_runtime_and_not_its_dev_tools():
    names = offline_wheels.requirement_closure(["grpo-lightning"])
    assert {"torch", "lightning", "transformers", "deepspeed", "jsonargparse", "docstring-parser"} <= names
    assert "pytest" not in names
    without_torch = offline_wheels.requirement_closure(["grpo-lightning"], skip=["torch", "torchvision"])
    assert "torch" not in without_torch and "lightning" in without_torch


@pytest.mark.parametrize(
    "filename, name",
    [
        ("pydantic_core-2.50.5-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", "pydantic-core"),
        ("typing_inspection-0.4.5-py3-none-any.whl", "typing-inspection"),
        ("Jinja2-3.1.6-py3-none-any.whl", "jinja2"),
        ("grpo_lightning-0.1.0-py3-none-any.whl", "grpo-lightning"),
    ],
)
def test_wheel_name_is_the_normalised_distribution_name(filename, name):
    assert offline_wheels.wheel_name(Path(filename)) == name


def test_pins_are_this_environments_public_versions():
    torch_version = version("torch").split("+")[0]
    assert offline_wheels.pinned(["transformers", "torch"]) == [
        f"torch=={torch_version}",
        f"transformers=={version('transformers')}",
    ]
    with pytest.raises(SystemExit, match="Not installed here: no-such-package-x"):
        offline_wheels.pinned(["torch", "no-such-package-x"])
