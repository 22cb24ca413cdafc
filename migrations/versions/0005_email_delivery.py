"""email delivery: a sending status, retries and claims; the customer's time zone and usage email opt-out

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 10:35:53.310978

"""
from alembic import op
import sqlalchemy as sa

import portal.models.types


# revision identifiers, used by Alembic.
revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('email_log', schema=None) as batch_op:
        batch_op.add_column(sa.Column('next_attempt_at', portal.models.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('claimed_until', portal.models.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('interrupted', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column('message_id', sa.String(length=255), nullable=True))
        batch_op.create_index('ix_email_log_status_next_attempt', ['status', 'next_attempt_at'], unique=False)
        # A new status, "sending": the CHECK of the enum lists every value.
        batch_op.drop_constraint(op.f('ck_email_log_email_status'), type_='check')
        batch_op.create_check_constraint('email_status', "status IN ('queued', 'sending', 'sent', 'failed')")
    # Emails queued before this could be sent are due now.
    op.execute("UPDATE email_log SET next_attempt_at = created_at WHERE status = 'queued'")

    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('timezone', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('usage_emails', sa.Boolean(), server_default=sa.true(), nullable=False))



def downgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('usage_emails')
        batch_op.drop_column('timezone')

    op.execute("UPDATE email_log SET status = 'queued' WHERE status = 'sending'")
    with op.batch_alter_table('email_log', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_email_log_email_status'), type_='check')
        batch_op.create_check_constraint('email_status', "status IN ('queued', 'sent', 'failed')")
        batch_op.drop_index('ix_email_log_status_next_attempt')
        batch_op.drop_column('message_id')
        batch_op.drop_column('interrupted')
        batch_op.drop_column('claimed_until')
        batch_op.drop_column('next_attempt_at')

