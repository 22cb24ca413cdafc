"""Wallet movements: every change of balance is a new ledger entry, written by a guarded update.

The balance changes only in the same transaction as its entry, and a debit only where the
balance covers it (`UPDATE ... WHERE balance >= :amount`), so concurrent debits never
overdraw and sum(entries) == balance always (DESIGN §3.2). Each movement carries a natural
idempotency key backed by a unique constraint: the same movement twice is one entry.
"""
from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from portal.clock import now
from portal.extensions import db
from portal.models import EntryKind, Wallet, WalletEntry
from portal.services.statements import connection, insert_loaded, rows_cte

_CREDIT_KINDS = {EntryKind.TOPUP, EntryKind.REFUND, EntryKind.CREDIT, EntryKind.ADJUSTMENT}
_DEBIT_KINDS = {EntryKind.PAYMENT, EntryKind.REFUND, EntryKind.ADJUSTMENT}


class WalletError(Exception):
    """Base class for wallet errors; the message is fit to show the customer."""


class InsufficientFunds(WalletError):
    def __init__(self, balance: int, amount: int) -> None:
        self.balance, self.amount = balance, amount
        super().__init__("the wallet balance does not cover this payment")


class IdempotencyConflict(WalletError):
    """The key was already used for a different movement."""


_BY_USER = sa.select(Wallet).where(Wallet.user_id == sa.bindparam("user_id"))


def get_wallet(user_id: int, currency: str = "USD") -> Wallet:
    """The customer's wallet, created empty on first use."""
    wallet = db.session.scalar(_BY_USER, {"user_id": user_id})
    if wallet is not None:
        return wallet
    try:
        with db.session.begin_nested():
            wallet = Wallet(user_id=user_id, currency=currency, balance=0)
            db.session.add(wallet)
    except IntegrityError:  # created by a concurrent request a moment ago
        wallet = db.session.scalar(sa.select(Wallet).where(Wallet.user_id == user_id))
    return wallet


def credit(
    user_id: int,
    amount: int,
    *,
    reason: str,
    idempotency_key: str,
    kind: EntryKind = EntryKind.CREDIT,
    actor_id: int | None = None,
    reference: str | None = None,
) -> WalletEntry:
    """Add `amount` minor units to the wallet (a top-up, refund, credit or positive adjustment)."""
    _check_amount(amount)
    if kind not in _CREDIT_KINDS:
        raise WalletError(f"a {kind.value} cannot add money to a wallet")
    return _move(user_id, amount, kind, reason, idempotency_key, actor_id, reference)


def debit(
    user_id: int,
    amount: int,
    *,
    reason: str,
    idempotency_key: str,
    kind: EntryKind = EntryKind.PAYMENT,
    actor_id: int | None = None,
    reference: str | None = None,
    wallet: Wallet | None = None,
    new_key: bool = False,
) -> WalletEntry:
    """Take `amount` minor units from the wallet, or raise InsufficientFunds and change nothing
    (`wallet`: the customer's wallet, when the caller has it at hand; `new_key`: the key names something
    made in this transaction, e.g. a new invoice's number, so no entry can have it yet)."""
    _check_amount(amount)
    if kind not in _DEBIT_KINDS:
        raise WalletError(f"a {kind.value} cannot take money from a wallet")
    return _move(user_id, -amount, kind, reason, idempotency_key, actor_id, reference, wallet, new_key)


def refund_to_wallet(user_id: int, amount: int, *, reason: str, idempotency_key: str, **kw) -> WalletEntry:
    """Give money back into the wallet (e.g. an unused-time credit or a reversed payment)."""
    return credit(user_id, amount, reason=reason, idempotency_key=idempotency_key, kind=EntryKind.REFUND, **kw)


def _check_amount(amount: int) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise TypeError("wallet amounts are integers in minor units")
    if amount <= 0:
        raise WalletError("the amount must be greater than zero")


def _move(
    user_id: int,
    signed: int,
    kind: EntryKind,
    reason: str,
    key: str,
    actor_id: int | None,
    reference: str | None,
    wallet: Wallet | None = None,
    new_key: bool = False,
) -> WalletEntry:
    if not new_key:
        existing = _existing(key)
        if existing is not None:
            return _replay(existing, user_id, signed, kind)
    if wallet is None or wallet.user_id != user_id:
        wallet = get_wallet(user_id)
    if new_key:
        # No entry can hold a key made this transaction: nothing to replay, no savepoint to fall back to.
        # The unique key still holds; a conflict would fail the whole transaction, never move money twice.
        entry = _write(wallet, signed, kind, reason, key, actor_id, reference)
    else:
        try:
            with db.session.begin_nested():
                entry = _write(wallet, signed, kind, reason, key, actor_id, reference)
        except IntegrityError:
            # A concurrent transaction recorded the same key first; the savepoint undid our update.
            existing = _existing(key)
            if existing is None:
                raise
            return _replay(existing, user_id, signed, kind)
    db.session.expire(wallet, ["balance", "updated_at"])
    return entry


_WALLETS = Wallet.__table__
_MOVE = (sa.update(_WALLETS)
         .values(balance=_WALLETS.c.balance + sa.bindparam("signed", type_=_WALLETS.c.balance.type),
                 updated_at=sa.bindparam("at", type_=_WALLETS.c.updated_at.type))
         .returning(_WALLETS.c.balance))
_CREDIT = _MOVE.where(_WALLETS.c.id == sa.bindparam("wallet_id"))
#: The guard: a debit only where the balance covers it.
_DEBIT = _CREDIT.where(_WALLETS.c.balance >= -sa.bindparam("signed", type_=_WALLETS.c.balance.type))


def _write(wallet: Wallet, signed: int, kind: EntryKind, reason: str, key: str, actor_id: int | None,
           reference: str | None) -> WalletEntry:
    """The guarded balance update and its ledger entry (a debit the balance does not cover changes nothing)."""
    table = Wallet.__table__
    balance = db.session.execute(_DEBIT if signed < 0 else _CREDIT,
                                 {"wallet_id": wallet.id, "signed": signed, "at": now()}).scalar_one_or_none()
    if balance is None:
        current = db.session.execute(sa.select(table.c.balance).where(table.c.id == wallet.id)).scalar_one()
        raise InsufficientFunds(current, -signed)
    entry = WalletEntry(
        wallet_id=wallet.id,
        kind=kind,
        amount=signed,
        currency=wallet.currency,
        balance_after=balance,
        reason=reason,
        actor_id=actor_id,
        reference=reference,
        idempotency_key=key,
        created_at=now(),
    )
    return insert_loaded(entry)


@dataclass(frozen=True)
class Debit:
    """One of `debit_many`'s payments: `amount` (> 0) out of a wallet, under a key no entry can have yet."""

    wallet_id: int
    amount: int
    currency: str
    reason: str
    idempotency_key: str
    reference: str | None = None


_ENTRIES = WalletEntry.__table__


def debit_many(debits: list[Debit]) -> list[int]:
    """Take many payments, each from another wallet, by one guarded update and one insert of their ledger
    entries; returns each wallet's balance after its debit, in order.

    The same guard as `debit` (a balance moves only where it covers the amount) and the same unique keys,
    for a batch: if any balance falls short (it fell since the caller read it), InsufficientFunds is
    raised with the others already moved, and the caller must roll the transaction back. The keys must
    name something made in this transaction (as `debit`'s `new_key`): nothing is replayed."""
    if not debits:
        return []
    for item in debits:
        _check_amount(item.amount)
    if len({item.wallet_id for item in debits}) != len(debits):
        raise ValueError("debit_many takes one debit per wallet")
    at = now()
    moves = rows_cte("moves", {"wallet_id": _WALLETS.c.id.type, "amount": _WALLETS.c.balance.type},
                     [(item.wallet_id, item.amount) for item in debits])
    balances = dict(db.session.execute(
        sa.update(_WALLETS).where(_WALLETS.c.id == moves.c.wallet_id, _WALLETS.c.balance >= moves.c.amount)
        .values(balance=_WALLETS.c.balance - moves.c.amount, updated_at=at)
        .returning(_WALLETS.c.id, _WALLETS.c.balance)
    ).all())
    short = [item for item in debits if item.wallet_id not in balances]
    if short:
        current = db.session.execute(sa.select(_WALLETS.c.balance).where(_WALLETS.c.id == short[0].wallet_id)).scalar()
        raise InsufficientFunds(current or 0, short[0].amount)
    after = [balances[item.wallet_id] for item in debits]
    connection().execute(_ENTRIES.insert(), [
        {"wallet_id": item.wallet_id, "kind": EntryKind.PAYMENT, "amount": -item.amount, "currency": item.currency,
         "balance_after": balance, "reason": item.reason, "actor_id": None, "reference": item.reference,
         "idempotency_key": item.idempotency_key, "created_at": at}
        for item, balance in zip(debits, after)])
    return after


def _existing(key: str) -> WalletEntry | None:
    return db.session.scalar(sa.select(WalletEntry).where(WalletEntry.idempotency_key == key))


def _replay(entry: WalletEntry, user_id: int, signed: int, kind: EntryKind) -> WalletEntry:
    wallet_user = db.session.scalar(sa.select(Wallet.user_id).where(Wallet.id == entry.wallet_id))
    if wallet_user != user_id or entry.amount != signed or entry.kind is not kind:
        raise IdempotencyConflict(f"idempotency key {entry.idempotency_key!r} was used for another movement")
    return entry


def ledger_sum(wallet_id: int) -> int:
    """Sum of a wallet's entries (equals its balance; used by checks and tests)."""
    return int(db.session.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(WalletEntry.amount), 0)).where(WalletEntry.wallet_id == wallet_id)
    ))
