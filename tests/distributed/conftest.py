"""Fixtures for the distributed tests: a real RabbitMQ broker, a queue name per test, a base directory
with a custom node pack, and frontends and workers started as processes (see ``distributed_helpers``).

The broker is ``COMFYUI_TEST_AMQP_URI`` (default amqp://guest:guest@127.0.0.1); tests that need it
are skipped, saying so, when it cannot be reached.
"""
from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from distributed_helpers import AMQP_URI, Cluster, delete_layout, make_base


async def _probe(uri: str) -> None:
    import aio_pika

    connection = await aio_pika.connect(uri, timeout=5)
    await connection.close()


@pytest.fixture(scope="session")
def broker() -> str:
    """The broker's URI; skips the test when no broker answers there."""
    try:
        asyncio.run(_probe(AMQP_URI))
    except (OSError, asyncio.TimeoutError, ConnectionError) as error:
        pytest.skip(f"no RabbitMQ broker at {AMQP_URI} ({error}); start one (Debian: apt-get install "
                    f"rabbitmq-server; rabbitmq-server -detached) or set COMFYUI_TEST_AMQP_URI")
    except Exception as error:  # aio-pika's own errors, e.g. a refused login: still no usable broker
        pytest.skip(f"the RabbitMQ broker at {AMQP_URI} cannot be used: {type(error).__name__}: {error}")
    return AMQP_URI


@pytest.fixture
def queue_name(broker: str) -> Iterator[str]:
    """A queue name of this test's own, so tests never see each other's prompts; deleted afterwards."""
    name = f"comfyui-test-{uuid.uuid4().hex[:12]}"
    yield name
    asyncio.run(delete_layout(broker, name))


@pytest.fixture
def base_dir(tmp_path: Path) -> Path:
    return make_base(tmp_path / "base")


@pytest.fixture
def cluster(broker: str, queue_name: str) -> Iterator[Cluster]:
    started = Cluster(broker, queue_name)
    yield started
    started.stop()
