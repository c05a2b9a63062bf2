"""The Router: named handlers, middleware, per-handler concurrency, graceful close.

``Router`` and its types live here; the middleware in
:mod:`eventmill.router.middleware` (re-exported here for convenience).
"""

from eventmill.router.handler import (
    Handler,
    HandlerInfo,
    HandlerResult,
    Middleware,
    current_handler,
)
from eventmill.router.middleware import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CorrelationID,
    CorrelationIDConfig,
    Deduplicator,
    DeduplicatorConfig,
    HandlerMetrics,
    MemorySeenStore,
    PoisonQueue,
    PoisonQueueConfig,
    Recoverer,
    RecovererConfig,
    Retry,
    RetryConfig,
    SeenStore,
    Throttle,
    ThrottleConfig,
    Timeout,
    TimeoutConfig,
    correlation_id,
)
from eventmill.router.router import Router, RouterConfig

__all__ = [
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CorrelationID",
    "CorrelationIDConfig",
    "Deduplicator",
    "DeduplicatorConfig",
    "Handler",
    "HandlerInfo",
    "HandlerMetrics",
    "HandlerResult",
    "MemorySeenStore",
    "Middleware",
    "PoisonQueue",
    "PoisonQueueConfig",
    "Recoverer",
    "RecovererConfig",
    "Retry",
    "RetryConfig",
    "Router",
    "RouterConfig",
    "SeenStore",
    "Throttle",
    "ThrottleConfig",
    "Timeout",
    "TimeoutConfig",
    "correlation_id",
    "current_handler",
]
