"""Fixtures shared by the whole test suite."""

import pytest


@pytest.fixture
def store_dir(tmp_path):
    """Path for a fresh store directory; it does not exist yet (mkfs creates it)."""
    return tmp_path / "store"
