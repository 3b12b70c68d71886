"""Fixtures shared by the integration tests (the broker fixture lives in tests/conftest.py)."""

from __future__ import annotations

import pytest

from ..modelkit import make_registry


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """A small trained model registry; tests that change it copy it first."""
    path = tmp_path_factory.mktemp("registry")
    make_registry(path)
    return path
