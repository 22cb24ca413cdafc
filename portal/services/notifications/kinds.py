"""Every email the portal sends: its subject, who it is for, and sample facts for previews and tests.

The templates are `templates/emails/<name>.txt` and `.html`, both required (a test checks every
kind has both and that each says the facts of its sample). Amounts in a context are integer minor
units with their `currency`; instants are ISO 8601 strings, shown in the customer's time zone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Kind:
    name: str
    #: A Jinja template, rendered with the context (the same filters as the bodies).
    subject: str
    #: A context to preview the email with; `facts` are what both parts must say of it.
    sample: dict[str, Any] = field(default_factory=dict)
    facts: tuple[str, ...] = ()
    #: "customer" (to the account's address) or "staff" (to STAFF_ALERT_EMAIL).
    audience: str = "customer"
    #: The customer may turn it off on the account page (usage emails); lifecycle and receipts are not.
    optional: bool = False


_PERIOD_END = "2026-02-28T09:00:00+00:00"

KINDS: dict[str, Kind] = {kind.name: kind for kind in (
    Kind("subscription_activated", "Your {{ plan }} plan is active",
         {"plan": "Premium", "amount": 999, "currency": "USD", "invoice": "INV-000042", "period_end": _PERIOD_END},
         ("Premium", "$9.99", "28 Feb 2026", "/invoices/INV-000042", "/subscription")),
    Kind("renewal_reminder", "Your {{ plan }} plan renews on {{ renews_at|day }}",
         {"plan": "Premium", "amount": 1164, "currency": "USD", "renews_at": _PERIOD_END},
         ("Premium", "$11.64", "28 Feb 2026", "/subscription")),
    Kind("renewal_succeeded", "Receipt: your {{ plan }} plan is renewed",
         {"plan": "Premium", "amount": 999, "currency": "USD", "invoice": "INV-000043", "period_end": "2026-03-28T09:00:00+00:00"},
         ("Premium", "$9.99", "28 Mar 2026", "/invoices/INV-000043")),
    Kind("renewal_failed", "Your {{ plan }} renewal payment did not go through",
         {"plan": "Premium", "amount": 999, "currency": "USD", "invoice": "INV-000044",
          "grace_until": "2026-03-03T09:00:00+00:00", "reason": "Your card was declined."},
         ("Premium", "$9.99", "03 Mar 2026", "Your card was declined.", "/payment-methods", "/invoices/INV-000044")),
    Kind("subscription_expired", "Your {{ plan }} plan has ended",
         {"plan": "Premium", "ended_at": "2026-03-03T09:00:00+00:00", "free_plan": "Free"},
         ("Premium", "03 Mar 2026", "Free", "/plans")),
    Kind("features_restricted", "Your features are now those of the {{ free_plan }} plan",
         {"plan": "Premium", "free_plan": "Free", "limits": ["Quiz: 3 per month", "Flashcards: 3 per month"]},
         ("Premium", "Free", "Quiz: 3 per month", "/plans")),
    Kind("topup_receipt", "Receipt: {{ amount|money(currency) }} added to your wallet",
         {"amount": 2500, "currency": "USD", "balance": 4000, "invoice": "INV-000045", "card": "Visa •••• 4242"},
         ("$25.00", "$40.00", "Visa •••• 4242", "/invoices/INV-000045", "/wallet")),
    Kind("invoice_paid", "Receipt for {{ invoice }}",
         {"invoice": "INV-000046", "amount": 800, "currency": "USD", "what": "1 × 500 tokens",
          "paid_at": "2026-02-10T14:30:00+00:00"},
         ("INV-000046", "$8.00", "1 × 500 tokens", "10 Feb 2026", "/invoices/INV-000046")),
    Kind("refund_issued", "Refund of {{ amount|money(currency) }}",
         {"amount": 999, "currency": "USD", "what": "INV-000047", "to": "your card"},
         ("$9.99", "INV-000047", "your card", "/invoices")),
    Kind("usage_warning", "You have used {{ percent }} % of your {{ feature }}",
         {"feature": "AI tokens", "percent": 80, "used": 800, "limit": 1000, "unit": "tokens",
          "resets_at": _PERIOD_END},
         ("AI tokens", "800", "1,000", "28 Feb 2026", "/usage", "/account"), optional=True),
    Kind("usage_limit_reached", "You have used all your {{ feature }} for this period",
         {"feature": "AI tokens", "used": 1000, "limit": 1000, "unit": "tokens", "resets_at": _PERIOD_END},
         ("AI tokens", "1,000", "28 Feb 2026", "/plans", "/account"), optional=True),
    Kind("payment_needs_authentication", "Your bank asks you to confirm a payment of {{ amount|money(currency) }}",
         {"amount": 999, "currency": "USD", "what": "your Premium renewal", "payment_id": 7},
         ("$9.99", "your Premium renewal", "/payments/7")),
    Kind("staff_alert", "{{ count }} unresolved {{ 'failure needs' if count == 1 else 'failures need' }} a look",
         {"count": 12, "oldest_at": "2026-02-01T08:00:00+00:00",
          "types": [{"type": "renewal_payment", "count": 9}, {"type": "refund", "count": 3}]},
         ("12", "renewal_payment", "9", "01 Feb 2026", "/staff/"), audience="staff"),
)}
