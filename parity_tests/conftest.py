"""Every test in parity_tests/ compares against timm's own code: mark it `parity` (`pytest -m parity`)."""
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.parity)
