"""The wallet: a balance and the append-only ledger that explains it (DESIGN §3.2)."""
from __future__ import annotations

import enum
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.clock import now
from portal.extensions import db
from portal.models.types import IdType, MinorUnits, UTCDateTime, enum_column


class EntryKind(str, enum.Enum):
    TOPUP = "topup"  #: money in from a card payment
    PAYMENT = "payment"  #: money out to pay an invoice or package
    REFUND = "refund"  #: money back into the wallet, or out to the card
    CREDIT = "credit"  #: goodwill or proration credit granted by us
    ADJUSTMENT = "adjustment"  #: staff correction, either sign


class Wallet(db.Model):
    __tablename__ = "wallets"
    __table_args__ = (sa.CheckConstraint("balance >= 0", name="balance_not_negative"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), unique=True)
    #: ISO 4217 code of the balance; the wallet pays only invoices in this currency.
    currency: Mapped[str] = mapped_column(sa.String(3), default="USD")
    #: Minor units of `currency`; always equal to the sum of the entries, changed only beside a new
    #: entry, by a guarded update.
    balance: Mapped[int] = mapped_column(MinorUnits, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now)


class WalletEntry(db.Model):
    """One movement of money; never updated or deleted. Corrections are new entries."""

    __tablename__ = "wallet_entries"
    __table_args__ = (
        sa.CheckConstraint("amount <> 0", name="amount_not_zero"),
        # Money in is positive, money out negative; refunds and adjustments go either way.
        sa.CheckConstraint("(kind IN ('topup', 'credit') AND amount > 0) OR (kind = 'payment' AND amount < 0)"
                           " OR kind IN ('refund', 'adjustment')", name="kind_agrees_with_sign"),
        sa.CheckConstraint("balance_after >= 0", name="balance_after_not_negative"),
        # Keyset pagination of a wallet's ledger (newest first) and filtering by kind.
        sa.Index("ix_wallet_entries_wallet_id_desc", "wallet_id", "id"),
        sa.Index("ix_wallet_entries_wallet_kind", "wallet_id", "kind", "id"),
        sa.Index("ix_wallet_entries_wallet_created", "wallet_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    wallet_id: Mapped[int] = mapped_column(sa.ForeignKey("wallets.id", ondelete="RESTRICT"))
    kind: Mapped[EntryKind] = mapped_column(enum_column(EntryKind, "wallet_entry_kind"))
    #: Signed minor units of `currency`: positive adds to the balance, negative takes from it.
    amount: Mapped[int] = mapped_column(MinorUnits)
    currency: Mapped[str] = mapped_column(sa.String(3))
    #: The wallet's balance just after this entry, in minor units.
    balance_after: Mapped[int] = mapped_column(MinorUnits)
    #: Shown to the customer as the entry's description ("Payment of INV-000012").
    reason: Mapped[str] = mapped_column(sa.String(255))
    #: Who moved the money; NULL for the system.
    actor_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"))
    #: What it belongs to: "invoice:INV-000012" (paid or returned), "payment:42" (a card top-up or its refund).
    reference: Mapped[str | None] = mapped_column(sa.String(64))
    #: Natural key of the movement; the same movement cannot be recorded twice.
    idempotency_key: Mapped[str] = mapped_column(sa.String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now)

    wallet: Mapped[Wallet] = relationship()
