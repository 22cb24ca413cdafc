"""The subscription transition table: every pair is either allowed or refused, loudly."""

import itertools

import pytest

from portal.billing.lifecycle import (
    LIVE_STATUSES,
    TERMINAL_STATUSES,
    IllegalTransition,
    SubscriptionError,
    SubscriptionStatus as S,
    Transition as T,
    allowed_events,
    next_status,
)

# Written out independently of TRANSITIONS so a typo in the table fails here.
EXPECTED = {
    (None, T.START_TRIAL): S.TRIALING,
    (S.ACTIVE, T.TRY_PLAN): S.TRIALING,
    (None, T.ACTIVATE): S.ACTIVE,
    (S.TRIALING, T.ACTIVATE): S.ACTIVE,
    (S.ACTIVE, T.RENEW): S.ACTIVE,
    (S.TRIALING, T.CHANGE_PLAN): S.ACTIVE,
    (S.ACTIVE, T.CHANGE_PLAN): S.ACTIVE,
    (S.ACTIVE, T.PAYMENT_FAILED): S.PAST_DUE,
    (S.TRIALING, T.PAYMENT_FAILED): S.PAST_DUE,
    (S.PAST_DUE, T.PAYMENT_FAILED): S.PAST_DUE,
    (S.PAST_DUE, T.RECOVER): S.ACTIVE,
    (S.TRIALING, T.CANCEL): S.CANCELED,
    (S.ACTIVE, T.CANCEL): S.CANCELED,
    (S.PAST_DUE, T.CANCEL): S.CANCELED,
    (S.PAST_DUE, T.EXPIRE): S.EXPIRED,
    (S.TRIALING, T.EXPIRE): S.EXPIRED,
}
ALL_PAIRS = list(itertools.product([None, *S], T))


def test_enums_have_the_stored_values():
    assert [s.value for s in S] == ["trialing", "active", "past_due", "canceled", "expired"]
    assert T.PAYMENT_FAILED.value == "payment_failed"


@pytest.mark.parametrize(("current", "event"), [p for p in ALL_PAIRS if p in EXPECTED])
def test_allowed_transitions(current, event):
    assert next_status(current, event) is EXPECTED[(current, event)]


@pytest.mark.parametrize(("current", "event"), [p for p in ALL_PAIRS if p not in EXPECTED])
def test_every_other_pair_is_illegal(current, event):
    with pytest.raises(IllegalTransition) as info:
        next_status(current, event)
    assert info.value.current is current
    assert info.value.event is event
    assert isinstance(info.value, SubscriptionError)


def test_pair_count_is_complete():
    assert len(ALL_PAIRS) == 6 * 9
    assert len(EXPECTED) == 16


def test_messages_are_readable():
    with pytest.raises(IllegalTransition, match="^cannot cancel a subscription that is expired$"):
        next_status(S.EXPIRED, T.CANCEL)
    with pytest.raises(IllegalTransition, match="^cannot renew a subscription that does not exist yet$"):
        next_status(None, T.RENEW)
    with pytest.raises(IllegalTransition, match="^cannot renew a subscription that is past due$"):
        next_status(S.PAST_DUE, T.RENEW)
    with pytest.raises(IllegalTransition, match="^cannot start a trial for a subscription that is active$"):
        next_status(S.ACTIVE, T.START_TRIAL)


def test_strings_from_the_database_are_accepted():
    assert next_status("past_due", "recover") is S.ACTIVE
    with pytest.raises(ValueError):
        next_status("paused", "renew")


def test_terminal_states_allow_nothing():
    for status in TERMINAL_STATUSES:
        assert allowed_events(status) == set()
        for event in T:
            with pytest.raises(IllegalTransition):
                next_status(status, event)


def test_allowed_events_matches_table():
    for current in [None, *S]:
        assert allowed_events(current) == {e for (c, e) in EXPECTED if c is current}
    assert allowed_events(S.PAST_DUE) == {T.PAYMENT_FAILED, T.RECOVER, T.CANCEL, T.EXPIRE}


def test_live_statuses():
    assert LIVE_STATUSES == {S.TRIALING, S.ACTIVE, S.PAST_DUE}
    assert LIVE_STATUSES.isdisjoint(TERMINAL_STATUSES)
