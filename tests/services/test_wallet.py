"""Wallet ledger: guarded debits, idempotency, and sum(entries) == balance under concurrency."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.models import EntryKind, Wallet, WalletEntry
from portal.services import wallet
from tests.conftest import both_databases


@pytest.fixture
def customer(catalog):
    from portal.models import User

    return db.session.scalar(sa.select(User).where(User.email == "demo@portal.test"))


@both_databases
def test_credit_then_debit_keeps_ledger_and_balance_in_step(customer):
    wallet.credit(customer.id, 5000, kind=EntryKind.TOPUP, reason="top-up", idempotency_key="t1")
    entry = wallet.debit(customer.id, 1999, reason="Premium", idempotency_key="d1", reference="invoice:INV-1")
    db.session.commit()
    account = wallet.get_wallet(customer.id)
    assert account.balance == 3001
    assert entry.amount == -1999 and entry.balance_after == 3001 and entry.kind is EntryKind.PAYMENT
    assert wallet.ledger_sum(account.id) == 3001


@both_databases
def test_debit_beyond_balance_is_refused_and_writes_nothing(customer):
    wallet.credit(customer.id, 1000, kind=EntryKind.TOPUP, reason="top-up", idempotency_key="t1")
    db.session.commit()
    with pytest.raises(wallet.InsufficientFunds) as refused:
        wallet.debit(customer.id, 1001, reason="too much", idempotency_key="d1")
    db.session.commit()
    assert refused.value.balance == 1000
    assert wallet.get_wallet(customer.id).balance == 1000
    assert db.session.scalar(sa.select(sa.func.count()).select_from(WalletEntry)) == 1


@both_databases
def test_same_idempotency_key_twice_is_one_entry(customer):
    first = wallet.credit(customer.id, 700, kind=EntryKind.CREDIT, reason="goodwill", idempotency_key="gw-1")
    db.session.commit()
    again = wallet.credit(customer.id, 700, kind=EntryKind.CREDIT, reason="goodwill", idempotency_key="gw-1")
    db.session.commit()
    assert again.id == first.id
    assert wallet.get_wallet(customer.id).balance == 700
    with pytest.raises(wallet.IdempotencyConflict):
        wallet.credit(customer.id, 800, kind=EntryKind.CREDIT, reason="other", idempotency_key="gw-1")


@pytest.mark.parametrize("amount", [0, -5])
def test_non_positive_amounts_are_refused(customer, amount):
    with pytest.raises(wallet.WalletError):
        wallet.credit(customer.id, amount, reason="x", idempotency_key="k")
    with pytest.raises(TypeError):
        wallet.debit(customer.id, 1.5, reason="x", idempotency_key="k2")  # floats never touch money


def test_a_payment_cannot_add_money(customer):
    with pytest.raises(wallet.WalletError):
        wallet.credit(customer.id, 100, kind=EntryKind.PAYMENT, reason="x", idempotency_key="k")


def test_balance_constraint_holds_in_the_database(customer):
    """Even a raw write cannot take the balance below zero (CHECK constraint)."""
    account = wallet.get_wallet(customer.id)
    db.session.commit()
    with pytest.raises(sa.exc.IntegrityError):
        db.session.execute(sa.update(Wallet).where(Wallet.id == account.id).values(balance=-1))
    db.session.rollback()


@both_databases
@pytest.mark.parametrize("app_config", [{"SQLALCHEMY_ENGINE_OPTIONS": {"pool_size": 40, "max_overflow": 0}}])
def test_200_concurrent_debits_never_overdraw(app, customer):
    """200 threads debit 300 each from 20,000: exactly 66 succeed, the rest are refused whole."""
    user_id = customer.id
    wallet.credit(user_id, 20_000, kind=EntryKind.TOPUP, reason="top-up", idempotency_key="seed")
    db.session.commit()
    barrier = threading.Barrier(40)
    outcomes: list[str] = []
    lock = threading.Lock()

    def debit(i: int) -> None:
        with app.app_context():
            if i < 40:
                barrier.wait()
            try:
                wallet.debit(user_id, 300, reason=f"debit {i}", idempotency_key=f"debit-{i}")
                db.session.commit()
                result = "ok"
            except wallet.InsufficientFunds:
                db.session.rollback()
                result = "refused"
            finally:
                db.session.remove()
            with lock:
                outcomes.append(result)

    with ThreadPoolExecutor(max_workers=40) as pool:
        list(pool.map(debit, range(200)))

    db.session.expire_all()
    account = wallet.get_wallet(user_id)
    accepted = outcomes.count("ok")
    assert len(outcomes) == 200
    assert accepted == 20_000 // 300  # 66: every debit that fits is applied, no more
    assert account.balance == 20_000 - 300 * accepted == 200
    assert account.balance >= 0
    assert wallet.ledger_sum(account.id) == account.balance
    debits = db.session.scalars(sa.select(WalletEntry).where(WalletEntry.kind == EntryKind.PAYMENT)).all()
    assert len(debits) == accepted and all(e.amount == -300 for e in debits)
    # balance_after runs down in steps of 300 with no gaps or repeats.
    assert sorted(e.balance_after for e in debits) == [200 + 300 * k for k in range(accepted)]


@both_databases
@pytest.mark.parametrize("app_config", [{"SQLALCHEMY_ENGINE_OPTIONS": {"pool_size": 20, "max_overflow": 0}}])
def test_same_key_from_many_threads_is_one_entry(app, customer):
    user_id = customer.id
    db.session.rollback()  # end the read transaction (on SQLite it holds the write lock)
    barrier = threading.Barrier(20)

    def credit(_):
        with app.app_context():
            barrier.wait()
            try:
                entry = wallet.credit(user_id, 500, kind=EntryKind.TOPUP, reason="top-up", idempotency_key="pi_123")
                db.session.commit()
                return entry.id
            finally:
                db.session.remove()

    with ThreadPoolExecutor(max_workers=20) as pool:
        ids = set(pool.map(credit, range(20)))
    db.session.expire_all()
    assert len(ids) == 1
    assert wallet.get_wallet(user_id).balance == 500
    assert db.session.scalar(sa.select(sa.func.count()).select_from(WalletEntry)) == 1
