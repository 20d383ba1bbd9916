"""scripts/device_wheels.py's pure parts: wheel names and pins (the download itself needs PyPI)."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest

from scripts import device_wheels


@pytest.mark.parametrize(
    "filename, name",
    [
        ("pydantic_core-2.50.5-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", "pydantic-core"),
        ("typing_inspection-0.4.5-py3-none-any.whl", "typing-inspection"),
        ("multiprocess-0.70.19-py312-none-any.whl", "multiprocess"),
        ("Jinja2-3.1.6-py3-none-any.whl", "jinja2"),
        ("deepspeed-0.19.8-py3-none-any.whl", "deepspeed"),
    ],
)
def test_wheel_name_is_the_normalised_distribution_name(filename, name):
    assert device_wheels.wheel_name(Path(filename)) == name


def test_pins_are_this_environments_versions():
    assert device_wheels.pinned(("torch", "transformers")) == [
        f"torch=={version('torch')}",
        f"transformers=={version('transformers')}",
    ]
    with pytest.raises(SystemExit, match="Not installed here: no-such-package-x"):
        device_wheels.pinned(("torch", "no-such-package-x"))


def test_the_check_needs_no_bench_package_and_nothing_twice():
    names = device_wheels.CHECK_PACKAGES + device_wheels.BENCH_PACKAGES
    assert len(set(names)) == len(names)
    assert {"trl", "datasets"} <= set(device_wheels.BENCH_PACKAGES)
    assert "deepspeed" in device_wheels.CHECK_PACKAGES and set(device_wheels.SDIST_ONLY) <= set(names)
