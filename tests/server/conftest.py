"""Fixtures: a real ``podserve serve`` process on a free localhost port, shared by the test session."""
import pytest

from tests.server.util import ServerProcess


@pytest.fixture(scope="session")
def server():
    """The default model served with default flags, shared by every test module (one model load)."""
    proc = ServerProcess()
    yield proc
    proc.stop()
