"""one purchase path: purchase effects on invoices, one open purchase per subject, money CHECKs

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 09:30:00

"""
from alembic import op
import sqlalchemy as sa

import portal.models.types


# revision identifiers, used by Alembic.
revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

_ONE_OPEN = "status = 'open' AND reason IN ('upgrade', 'renewal')"
_OPEN_CARD = "provider = 'stripe' AND status IN ('pending', 'requires_action')"
_KIND_SIGN = ("(kind IN ('topup', 'credit') AND amount > 0) OR (kind = 'payment' AND amount < 0)"
              " OR kind IN ('refund', 'adjustment')")


def upgrade():
    with op.batch_alter_table('invoices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('purchase', sa.JSON(), nullable=False, server_default='{}'))

    # What an open invoice was for used to travel on its payments; it now lives on the invoice.
    op.execute(
        "UPDATE invoices SET purchase = (SELECT p.data FROM payments p WHERE p.invoice_id = invoices.id "
        "ORDER BY p.id DESC LIMIT 1) WHERE EXISTS (SELECT 1 FROM payments p WHERE p.invoice_id = invoices.id)"
    )
    # Upgrades whose unused-time credit exceeded the new charge had a negative total and credited the
    # difference to the wallet; say so in a line of its own so every invoice totals zero or more.
    conn = op.get_bind()
    negative = conn.execute(sa.text("SELECT id, total FROM invoices WHERE total < 0")).all()
    for invoice_id, total in negative:
        position = conn.execute(sa.text("SELECT COALESCE(MAX(position), 0) + 1 FROM invoice_lines "
                                        "WHERE invoice_id = :id"), {"id": invoice_id}).scalar_one()
        conn.execute(sa.text(
            "INSERT INTO invoice_lines (invoice_id, position, kind, description, quantity, amount, breakdown) "
            "VALUES (:id, :position, 'credit', 'Unused credit added to your wallet', 1, :amount, '[]')"
        ), {"id": invoice_id, "position": position, "amount": -total})
        conn.execute(sa.text("UPDATE invoices SET total = 0 WHERE id = :id"), {"id": invoice_id})

    with op.batch_alter_table('invoices', schema=None) as batch_op:
        batch_op.create_check_constraint('amount_paid_within_total', 'amount_paid <= total')
        batch_op.create_index('uq_invoices_open_purchase', ['subscription_id', 'reason'], unique=True,
                              sqlite_where=sa.text(_ONE_OPEN), postgresql_where=sa.text(_ONE_OPEN))

    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('stripe_idempotency_key', sa.String(length=255), nullable=True))
        batch_op.create_unique_constraint(batch_op.f('uq_payments_stripe_idempotency_key'),
                                          ['stripe_idempotency_key'])
        batch_op.create_check_constraint('amount_refunded_within_amount',
                                         'amount_refunded >= 0 AND amount_refunded <= amount')
        batch_op.create_index('uq_payments_open_card_per_invoice', ['invoice_id'], unique=True,
                              sqlite_where=sa.text(_OPEN_CARD), postgresql_where=sa.text(_OPEN_CARD))

    with op.batch_alter_table('wallet_entries', schema=None) as batch_op:
        batch_op.create_check_constraint('kind_agrees_with_sign', _KIND_SIGN)

    with op.batch_alter_table('plans', schema=None) as batch_op:
        batch_op.create_index('uq_plans_one_default', ['is_default'], unique=True,
                              sqlite_where=sa.text('is_default'), postgresql_where=sa.text('is_default'))

    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claimed_until', portal.models.types.UTCDateTime(timezone=True),
                                      nullable=True))


def downgrade():
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_column('claimed_until')

    with op.batch_alter_table('plans', schema=None) as batch_op:
        batch_op.drop_index('uq_plans_one_default', sqlite_where=sa.text('is_default'),
                            postgresql_where=sa.text('is_default'))

    with op.batch_alter_table('wallet_entries', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_wallet_entries_kind_agrees_with_sign'), type_='check')

    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.drop_index('uq_payments_open_card_per_invoice', sqlite_where=sa.text(_OPEN_CARD),
                            postgresql_where=sa.text(_OPEN_CARD))
        batch_op.drop_constraint(op.f('ck_payments_amount_refunded_within_amount'), type_='check')
        batch_op.drop_constraint(batch_op.f('uq_payments_stripe_idempotency_key'), type_='unique')
        batch_op.drop_column('stripe_idempotency_key')

    with op.batch_alter_table('invoices', schema=None) as batch_op:
        batch_op.drop_index('uq_invoices_open_purchase', sqlite_where=sa.text(_ONE_OPEN),
                            postgresql_where=sa.text(_ONE_OPEN))
        batch_op.drop_constraint(op.f('ck_invoices_amount_paid_within_total'), type_='check')
        batch_op.drop_column('purchase')
