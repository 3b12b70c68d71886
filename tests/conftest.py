"""Test rings: pure unit tests run anywhere; `integration` tests need the real Kafka broker.

The broker comes from KAFKA_BOOTSTRAP_SERVERS (set by `make test`, which starts one), or this
conftest starts one itself. If neither works the integration tests FAIL: they never skip.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from clickstream_tools import broker

# Property tests check properties, not speed: on a slow, loaded 2-core machine input generation
# can trip Hypothesis's timing health checks and per-example deadlines, so both are off.
settings.register_profile("default", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        if not broker.broker_responds(env, timeout_s=10):
            pytest.fail(f"KAFKA_BOOTSTRAP_SERVERS={env} does not answer")
        yield env
        return
    data_dir = Path(tempfile.mkdtemp(prefix="clickstream-test-kafka-"))
    try:
        info = broker.up(data_dir, port=broker.free_port())
    except broker.BrokerError as e:
        pytest.fail(f"could not start the Kafka broker the integration tests need: {e}")
    try:
        yield info.bootstrap
    finally:
        broker.down(data_dir)


@pytest.fixture
def namespace() -> str:
    """A unique topic prefix, so every test has its own topics and consumer group."""
    return f"t{uuid.uuid4().hex[:10]}."
