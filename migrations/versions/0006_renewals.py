"""renewals: the shared clock, renewal leases, reminders

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 11:34:22.966456

"""
from alembic import op
import sqlalchemy as sa

import portal.models.types


# revision identifiers, used by Alembic.
revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    # The shared billing clock's one row (read only where CLOCK_ADJUSTABLE is on).
    op.create_table('clock_settings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('offset_us', sa.BigInteger(), nullable=False),
    sa.Column('frozen_at', portal.models.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('updated_at', portal.models.types.UTCDateTime(timezone=True), nullable=True),
    sa.CheckConstraint('id = 1', name=op.f('ck_clock_settings_one_row')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_clock_settings'))
    )
    with op.batch_alter_table('subscriptions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('renewal_lease_until', portal.models.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('reminded_for', portal.models.types.UTCDateTime(timezone=True), nullable=True))



def downgrade():
    with op.batch_alter_table('subscriptions', schema=None) as batch_op:
        batch_op.drop_column('reminded_for')
        batch_op.drop_column('renewal_lease_until')

    op.drop_table('clock_settings')
