"""Payload models shipped with eventmill, registered by :meth:`EventRegistry.default`.

Razorpay models follow the real webhook body::

    {"entity": "event", "account_id": "acc_...", "event": "payment.captured",
     "contains": ["payment"], "payload": {"payment": {"entity": {...}}}, "created_at": 1700000000}

They also accept the flat shape used in eventmill's original description
(``{"event": ..., "account": {"id": ...}, "payment": {...}}``), lifting it into the real
one. Every model allows extra fields: providers add fields without notice. Razorpay
sends empty ``notes`` as ``[]``; the models read that as ``{}``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, model_validator

__all__ = [
    "BUILTIN_MODELS",
    "PaymentProcessed",
    "RazorpayOrder",
    "RazorpayOrderPaidEvent",
    "RazorpayPayment",
    "RazorpayPaymentEvent",
    "RazorpayRefund",
    "RazorpayRefundEvent",
    "RazorpayWebhook",
    "UserCreated",
]


def _notes(value: Any) -> Any:
    return {} if value is None or value == [] else value


Notes = Annotated[dict[str, Any], BeforeValidator(_notes)]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- Razorpay entities ---------------------------------------------------------------


class RazorpayPayment(_Open):
    """A Razorpay payment entity (amounts in the currency's smallest unit)."""

    id: str
    entity: str = "payment"
    amount: int
    currency: str
    status: str
    order_id: str | None = None
    invoice_id: str | None = None
    international: bool | None = None
    method: str | None = None
    amount_refunded: int | None = None
    refund_status: str | None = None
    captured: bool | None = None
    description: str | None = None
    card_id: str | None = None
    bank: str | None = None
    wallet: str | None = None
    vpa: str | None = None
    email: str | None = None
    contact: str | None = None
    notes: Notes = {}
    fee: int | None = None
    tax: int | None = None
    error_code: str | None = None
    error_description: str | None = None
    error_source: str | None = None
    error_step: str | None = None
    error_reason: str | None = None
    created_at: int | None = None


class RazorpayOrder(_Open):
    """A Razorpay order entity."""

    id: str
    entity: str = "order"
    amount: int
    amount_paid: int | None = None
    amount_due: int | None = None
    currency: str
    receipt: str | None = None
    offer_id: str | None = None
    status: str
    attempts: int | None = None
    notes: Notes = {}
    created_at: int | None = None


class RazorpayRefund(_Open):
    """A Razorpay refund entity."""

    id: str
    entity: str = "refund"
    amount: int
    currency: str
    payment_id: str
    notes: Notes = {}
    receipt: str | None = None
    acquirer_data: dict[str, Any] = {}
    status: str | None = None
    speed_processed: str | None = None
    speed_requested: str | None = None
    batch_id: str | None = None
    created_at: int | None = None


class _PaymentRef(_Open):
    entity: RazorpayPayment


class _OrderRef(_Open):
    entity: RazorpayOrder


class _RefundRef(_Open):
    entity: RazorpayRefund


# -- Razorpay webhook bodies ---------------------------------------------------------


def _lift_flat(data: Any) -> Any:
    """Turn the flat ``{"payment": {...}, "account": {"id": ...}}`` shape into the real one."""
    if not isinstance(data, dict) or "payload" in data:
        return data
    lifted: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("payment", "order", "refund") and isinstance(value, dict):
            lifted[key] = {"entity": value}
        else:
            rest[key] = value
    if not lifted:
        return data
    account = rest.get("account")
    if "account_id" not in rest and isinstance(account, dict) and "id" in account:
        rest["account_id"] = account["id"]
    rest.setdefault("contains", list(lifted))
    rest["payload"] = lifted
    return rest


class _RazorpayBase(_Open):
    entity: str = "event"
    account_id: str | None = None
    event: str
    contains: list[str] = []
    created_at: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _accept_flat_shape(cls, data: Any) -> Any:
        return _lift_flat(data)


class RazorpayWebhook(_RazorpayBase):
    """Any Razorpay webhook body; ``payload`` is left untyped."""

    payload: dict[str, Any] = {}


class _PaymentPayload(_Open):
    payment: _PaymentRef


class _OrderPaidPayload(_Open):
    payment: _PaymentRef
    order: _OrderRef


class _RefundPayload(_Open):
    refund: _RefundRef
    payment: _PaymentRef | None = None


class RazorpayPaymentEvent(_RazorpayBase):
    """``payment.authorized`` / ``payment.captured`` / ``payment.failed``."""

    payload: _PaymentPayload

    @property
    def payment(self) -> RazorpayPayment:
        """The payment entity."""
        return self.payload.payment.entity


class RazorpayOrderPaidEvent(_RazorpayBase):
    """``order.paid``: the order and the payment that paid it."""

    payload: _OrderPaidPayload

    @property
    def order(self) -> RazorpayOrder:
        """The order entity."""
        return self.payload.order.entity

    @property
    def payment(self) -> RazorpayPayment:
        """The payment entity."""
        return self.payload.payment.entity


class RazorpayRefundEvent(_RazorpayBase):
    """``refund.created`` / ``refund.processed`` / ``refund.failed``."""

    payload: _RefundPayload

    @property
    def refund(self) -> RazorpayRefund:
        """The refund entity."""
        return self.payload.refund.entity

    @property
    def payment(self) -> RazorpayPayment | None:
        """The refunded payment entity, when Razorpay includes it."""
        return None if self.payload.payment is None else self.payload.payment.entity


# -- the platform's own events (from the original description) -----------------------


class UserCreated(_Open):
    """``user.created``."""

    user_id: str
    email: str
    name: str
    created_at: datetime


class PaymentProcessed(_Open):
    """``payment.processed``."""

    payment_id: str
    user_id: str
    amount: float
    currency: str
    status: str
    gateway: str | None = None
    processed_at: datetime


BUILTIN_MODELS: dict[str, type[BaseModel]] = {
    "razorpay.payment.authorized": RazorpayPaymentEvent,
    "razorpay.payment.captured": RazorpayPaymentEvent,
    "razorpay.payment.failed": RazorpayPaymentEvent,
    "razorpay.order.paid": RazorpayOrderPaidEvent,
    "razorpay.refund.created": RazorpayRefundEvent,
    "razorpay.refund.processed": RazorpayRefundEvent,
    "razorpay.refund.failed": RazorpayRefundEvent,
    "user.created": UserCreated,
    "payment.processed": PaymentProcessed,
}
"""Event name -> model registered by :meth:`EventRegistry.default`."""
