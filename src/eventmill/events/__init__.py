"""Layer 3: the domain envelope (:class:`Event`), the type registry, typed handlers,
payload models and per-source transformers.

Imports only the library layers below it (message, pubsub, router, errors).
"""

from eventmill.events.envelope import (
    EVENT_NAME_RE,
    SOURCE_RE,
    Event,
    EventMetadata,
    EventSource,
    new_event_id,
)
from eventmill.events.models import (
    BUILTIN_MODELS,
    PaymentProcessed,
    RazorpayOrder,
    RazorpayOrderPaidEvent,
    RazorpayPayment,
    RazorpayPaymentEvent,
    RazorpayRefund,
    RazorpayRefundEvent,
    RazorpayWebhook,
    UserCreated,
)
from eventmill.events.registry import (
    EventHandlers,
    EventRegistry,
    TypedHandler,
    TypedHandlerResult,
    compile_pattern,
    validate_pattern,
)
from eventmill.events.transform import (
    DEFAULT_RAZORPAY_USER_ID_PATHS,
    GenericTransformer,
    RazorpayTransformer,
    Transformer,
    WebhookInput,
    github_transformer,
    resolve_path,
    standard_webhooks_transformer,
    stripe_transformer,
    transformer_for,
)

__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_RAZORPAY_USER_ID_PATHS",
    "EVENT_NAME_RE",
    "SOURCE_RE",
    "Event",
    "EventHandlers",
    "EventMetadata",
    "EventRegistry",
    "EventSource",
    "GenericTransformer",
    "PaymentProcessed",
    "RazorpayOrder",
    "RazorpayOrderPaidEvent",
    "RazorpayPayment",
    "RazorpayPaymentEvent",
    "RazorpayRefund",
    "RazorpayRefundEvent",
    "RazorpayTransformer",
    "RazorpayWebhook",
    "Transformer",
    "TypedHandler",
    "TypedHandlerResult",
    "UserCreated",
    "WebhookInput",
    "compile_pattern",
    "github_transformer",
    "new_event_id",
    "resolve_path",
    "standard_webhooks_transformer",
    "stripe_transformer",
    "transformer_for",
    "validate_pattern",
]
