"""Router middleware, one per module, each configured by a frozen dataclass.

Each is a ``Callable[[Handler], Handler]``. In ``Router.add_middleware(a, b, c)`` and
``add_handler(..., middleware=[d])`` the first is outermost: a message passes
``a → b → c → d → handler``. The recommended order, outermost first::

    HandlerMetrics(r) # outermost: each message's duration and outcome (and .attempts
                      #   innermost: the retries)
    Recoverer()       # last resort: log traceback, nack (never sees what poison parks)
    CorrelationID()   # id available to everything inside, stamped on results
    Deduplicator()    # skip duplicates before spending retries on them
    PoisonQueue(bus)  # park what still fails after every retry, then ack
    CircuitBreaker()  # counts messages that failed every retry (inside Retry: attempts)
    Retry()           # backoff between attempts
    Throttle()        # rate of attempts
    Timeout()         # innermost: bounds each attempt
"""

from eventmill.router.middleware.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitState,
)
from eventmill.router.middleware.correlation import (
    CORRELATION_ID_KEY,
    CorrelationID,
    CorrelationIDConfig,
    correlation_id,
)
from eventmill.router.middleware.deduplicator import (
    Deduplicator,
    DeduplicatorConfig,
    MemorySeenStore,
    SeenStore,
)
from eventmill.router.middleware.metrics import HandlerMetrics
from eventmill.router.middleware.poison import (
    POISON_HANDLER_KEY,
    POISON_REASON_KEY,
    POISON_TOPIC_KEY,
    PoisonQueue,
    PoisonQueueConfig,
)
from eventmill.router.middleware.recoverer import Recoverer, RecovererConfig
from eventmill.router.middleware.retry import Retry, RetryConfig
from eventmill.router.middleware.throttle import Throttle, ThrottleConfig
from eventmill.router.middleware.timeout import Timeout, TimeoutConfig

__all__ = [
    "CORRELATION_ID_KEY",
    "POISON_HANDLER_KEY",
    "POISON_REASON_KEY",
    "POISON_TOPIC_KEY",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitState",
    "CorrelationID",
    "CorrelationIDConfig",
    "Deduplicator",
    "DeduplicatorConfig",
    "HandlerMetrics",
    "MemorySeenStore",
    "PoisonQueue",
    "PoisonQueueConfig",
    "Recoverer",
    "RecovererConfig",
    "Retry",
    "RetryConfig",
    "SeenStore",
    "Throttle",
    "ThrottleConfig",
    "Timeout",
    "TimeoutConfig",
    "correlation_id",
]
