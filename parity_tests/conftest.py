"""Every test here compares against timm's own code (marked `parity`: `pytest -m parity`), and runs with the
float32 precision pinned on both sides (torch_ref/precision.py).

The pins are set once for the session, before any test or fixture of this folder computes anything, and
are checked at each test's call (where its state is also recorded, see test_precision.py) and again at
its end: a test run with TF32 on either side fails instead of passing on a lucky margin. Tests marked
`float64` are skipped, with the measured reason, on a backend without float64 (docs/gpu.md).
"""

import os
from pathlib import Path

import pytest

from torch_ref import precision

# JAX would take 75 % of a GPU at its first use: torch (and other pytest workers) share it here.
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')


_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.parity)


def pytest_configure(config):
    config.addinivalue_line('markers', 'float64: compares float64 runs; skipped where a side has no float64')


@pytest.fixture(scope='session', autouse=True)
def pinned_session():
    restore = precision.pin()
    yield
    restore()


@pytest.fixture(autouse=True)
def pinned_precision(pinned_session):  # pylint: disable=redefined-outer-name,unused-argument
    """Fails any test that leaves the pins changed."""
    yield
    precision.check()


def pytest_runtest_setup(item):
    """A float64 test is skipped before its fixtures run where float64 is missing."""
    if item.get_closest_marker('float64') is not None:
        reason = precision.float64_missing()
        if reason:
            pytest.skip(reason)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    item.user_properties.append(('precision', precision.state()))
    precision.check()
    return (yield)
