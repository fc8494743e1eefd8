"""`import spotd` stays cheap: the SDK's names load on first use, the daemon never pays."""

from __future__ import annotations

import subprocess
import sys

import pytest

import spotd


def test_import_spotd_imports_nothing_heavy() -> None:
    code = (
        "import sys, spotd\n"
        "heavy = [m for m in ('pydantic', 'aiohttp', 'yaml', 'spotd.spec', 'spotd.sdk')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_all_lists_exactly_the_lazy_names() -> None:
    assert set(spotd.__all__) == {*spotd._MODULES, *spotd._NAMES}


@pytest.mark.parametrize("name", spotd.__all__)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(spotd, name) is not None


def test_names_are_the_sdk_and_spec_objects() -> None:
    from spotd import aio, jobs, spec
    from spotd.sdk import errors

    assert spotd.Task is spec.Task and spotd.Service is spec.ServiceSpec
    assert jobs.launch and aio.jobs.launch and aio.serve.up
    assert spotd.NotFoundError is errors.NotFoundError


def test_unknown_name_is_an_attribute_error_and_submodules_still_import() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        spotd.nope  # noqa: B018
    from spotd import metrics  # a real submodule, found past __getattr__

    assert metrics.__name__ == "spotd.metrics"
