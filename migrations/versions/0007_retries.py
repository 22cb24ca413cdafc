"""retries: claims and money at stake on failed operations, the attempt timeline, staff alert states

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 12:40:00

"""
from alembic import op
import sqlalchemy as sa

import portal.models.types


# revision identifiers, used by Alembic.
revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('operation_errors', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claimed_until', portal.models.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('amount', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('currency', sa.String(length=3), nullable=True))
    with op.batch_alter_table('retry_attempts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('outcome', sa.String(length=16), nullable=False, server_default='failed'))
        batch_op.add_column(sa.Column('strategy', sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column('started_at', portal.models.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('next_retry_at', portal.models.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('actor_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_retry_attempts_actor_id_users'), 'users', ['actor_id'], ['id'],
                                    ondelete='SET NULL')
    op.create_table('alert_states',
    sa.Column('name', sa.String(length=40), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('crossings', sa.Integer(), nullable=False),
    sa.Column('changed_at', portal.models.types.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_alert_states'))
    )
    # Money at stake of the errors recorded before: from their context.
    errors = sa.table('operation_errors', sa.column('id', sa.Integer), sa.column('context', sa.JSON),
                      sa.column('amount', sa.BigInteger), sa.column('currency', sa.String))
    conn = op.get_bind()
    for row in conn.execute(sa.select(errors.c.id, errors.c.context)).all():
        context = row.context or {}
        amount = context.get('amount') if isinstance(context, dict) else None
        if isinstance(amount, int) and not isinstance(amount, bool):
            currency = context.get('currency')
            conn.execute(errors.update().where(errors.c.id == row.id).values(
                amount=amount, currency=str(currency).upper()[:3] if currency else None))


def downgrade():
    op.drop_table('alert_states')
    with op.batch_alter_table('retry_attempts', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_retry_attempts_actor_id_users'), type_='foreignkey')
        batch_op.drop_column('actor_id')
        batch_op.drop_column('next_retry_at')
        batch_op.drop_column('started_at')
        batch_op.drop_column('strategy')
        batch_op.drop_column('outcome')
    with op.batch_alter_table('operation_errors', schema=None) as batch_op:
        batch_op.drop_column('currency')
        batch_op.drop_column('amount')
        batch_op.drop_column('claimed_until')
