"""The subscription state machine: every status change goes through ``next_status``."""

from __future__ import annotations

from enum import Enum

__all__ = [
    "IllegalTransition",
    "LIVE_STATUSES",
    "SubscriptionError",
    "SubscriptionStatus",
    "TERMINAL_STATUSES",
    "TRANSITIONS",
    "Transition",
    "allowed_events",
    "next_status",
]


class SubscriptionStatus(str, Enum):
    """Where a subscription is in its life."""

    TRIALING = "trialing"
    ACTIVE = "active"
    PAST_DUE = "past_due"
    CANCELED = "canceled"
    EXPIRED = "expired"


class Transition(str, Enum):
    """Something that happens to a subscription (stored as a SubscriptionEvent row's kind)."""

    START_TRIAL = "start_trial"
    TRY_PLAN = "try_plan"
    ACTIVATE = "activate"
    RENEW = "renew"
    CHANGE_PLAN = "change_plan"
    PAYMENT_FAILED = "payment_failed"
    RECOVER = "recover"
    CANCEL = "cancel"
    EXPIRE = "expire"


class SubscriptionError(Exception):
    """Base class for subscription domain errors."""


class IllegalTransition(SubscriptionError):
    """An event that the current status does not allow."""

    def __init__(self, current: SubscriptionStatus | None, event: Transition) -> None:
        self.current = current
        self.event = event
        state = "does not exist yet" if current is None else f"is {current.value.replace('_', ' ')}"
        super().__init__(f"cannot {_VERBS[event]} a subscription that {state}")


_S = SubscriptionStatus

#: event -> (statuses it may happen in, status it leads to); None means "no subscription yet".
TRANSITIONS: dict[Transition, tuple[frozenset[SubscriptionStatus | None], SubscriptionStatus]] = {
    Transition.START_TRIAL: (frozenset({None}), _S.TRIALING),
    # From the Free plan to a free trial of a paid one (nothing is charged until the trial ends).
    Transition.TRY_PLAN: (frozenset({_S.ACTIVE}), _S.TRIALING),
    Transition.ACTIVATE: (frozenset({None, _S.TRIALING}), _S.ACTIVE),
    Transition.RENEW: (frozenset({_S.ACTIVE}), _S.ACTIVE),
    Transition.CHANGE_PLAN: (frozenset({_S.TRIALING, _S.ACTIVE}), _S.ACTIVE),
    # past_due -> past_due: each failed retry during the grace period is recorded too.
    Transition.PAYMENT_FAILED: (frozenset({_S.TRIALING, _S.ACTIVE, _S.PAST_DUE}), _S.PAST_DUE),
    Transition.RECOVER: (frozenset({_S.PAST_DUE}), _S.ACTIVE),
    Transition.CANCEL: (frozenset({_S.TRIALING, _S.ACTIVE, _S.PAST_DUE}), _S.CANCELED),
    Transition.EXPIRE: (frozenset({_S.TRIALING, _S.PAST_DUE}), _S.EXPIRED),
}

_VERBS: dict[Transition, str] = {
    Transition.START_TRIAL: "start a trial for",
    Transition.TRY_PLAN: "start a plan trial for",
    Transition.ACTIVATE: "activate",
    Transition.RENEW: "renew",
    Transition.CHANGE_PLAN: "change the plan of",
    Transition.PAYMENT_FAILED: "record a failed payment for",
    Transition.RECOVER: "recover",
    Transition.CANCEL: "cancel",
    Transition.EXPIRE: "expire",
}

LIVE_STATUSES: frozenset[SubscriptionStatus] = frozenset({_S.TRIALING, _S.ACTIVE, _S.PAST_DUE})
TERMINAL_STATUSES: frozenset[SubscriptionStatus] = frozenset({_S.CANCELED, _S.EXPIRED})


def _status(current: SubscriptionStatus | str | None) -> SubscriptionStatus | None:
    return None if current is None else SubscriptionStatus(current)


def next_status(current: SubscriptionStatus | str | None, event: Transition | str) -> SubscriptionStatus:
    """Return the status after ``event``, or raise IllegalTransition (None = not created yet)."""
    status, event = _status(current), Transition(event)
    allowed_from, to = TRANSITIONS[event]
    if status not in allowed_from:
        raise IllegalTransition(status, event)
    return to


def allowed_events(current: SubscriptionStatus | str | None) -> set[Transition]:
    """The events ``current`` allows (empty for terminal statuses)."""
    status = _status(current)
    return {event for event, (allowed_from, _) in TRANSITIONS.items() if status in allowed_from}
