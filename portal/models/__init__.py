"""All models, imported here so Alembic and the app see every table."""
from portal.models.audit import AuditLog, EmailLog, EmailStatus, IdempotencyRecord, OutboxMessage
from portal.models.clock import ClockSetting
from portal.models.errors import AlertState, ErrorStatus, OperationError, RetryAttempt, RetryOutcome, RetryStrategy
from portal.models.invoices import Invoice, InvoiceLine, InvoiceStatus, LineKind, NumberSequence
from portal.models.payments import (
    Payment,
    PaymentMethod,
    PaymentPurpose,
    PaymentStatus,
    Refund,
    RefundStatus,
    WebhookEvent,
)
from portal.models.plans import Feature, Plan, PlanFeature, PricingTier
from portal.models.subscriptions import Subscription, SubscriptionEvent
from portal.models.usage import UsageCounter, UsageDaily, UsageEvent
from portal.models.users import ApiKey, Role, User
from portal.models.wallet import EntryKind, Wallet, WalletEntry

__all__ = [
    "AlertState", "ApiKey", "AuditLog", "ClockSetting", "EmailLog", "EmailStatus", "EntryKind", "ErrorStatus", "Feature",
    "IdempotencyRecord", "Invoice", "InvoiceLine", "InvoiceStatus", "LineKind", "NumberSequence", "OperationError",
    "OutboxMessage", "Payment", "PaymentMethod", "PaymentPurpose", "PaymentStatus", "Plan",
    "PlanFeature", "PricingTier", "Refund", "RefundStatus", "RetryAttempt", "RetryOutcome", "RetryStrategy", "Role",
    "Subscription", "SubscriptionEvent", "UsageCounter", "UsageDaily", "UsageEvent", "User",
    "Wallet", "WalletEntry", "WebhookEvent",
]
