"""Bus URLs on every real broker, with names of their own (removed afterwards), for
tests that run whole services: ``bus_url_for(kind, ...)``."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import nats
import redis.asyncio as aioredis

from tests.conftest import require_service
from tests.pubsub._kafka_server import TansuServer

BUSES = ("memory", "sqlite", "postgresql", "redis", "nats", "kafka")


async def delete_redis_prefix(prefix: str) -> None:
    client = aioredis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def delete_nats_streams(prefix: str) -> None:
    nc = await nats.connect("nats://127.0.0.1:4222", connect_timeout=2, max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            if info.config.name.startswith(prefix):
                with contextlib.suppress(Exception):
                    await js.delete_stream(info.config.name)
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def broker_bus_url(kind: str, *, tansu: TansuServer | None = None) -> AsyncIterator[str]:
    """A bus URL on the real ``kind`` broker (redis, nats, kafka), names its own."""
    tag = uuid.uuid4().hex[:10]
    if kind == "redis":
        require_service("Redis", "127.0.0.1", 6379)
        prefix = f"emt-{tag}:"
        try:
            yield f"redis://127.0.0.1:6379/0?prefix={prefix}"
        finally:
            await delete_redis_prefix(prefix)
    elif kind == "nats":
        require_service("NATS", "127.0.0.1", 4222)
        prefix = f"emt-{tag}-"
        try:
            yield f"nats://127.0.0.1:4222?stream_prefix={prefix}&subject_prefix=emt{tag}."
        finally:
            await delete_nats_streams(prefix)
    elif kind == "kafka":
        assert tansu is not None
        yield f"kafka://127.0.0.1:{tansu.port}"
    else:
        raise ValueError(kind)
