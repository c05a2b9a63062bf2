from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from eventmill.pubsub.memory import MemoryPubSub


@pytest.fixture
async def bus() -> AsyncIterator[MemoryPubSub]:
    ps = MemoryPubSub()
    yield ps
    await ps.close()
