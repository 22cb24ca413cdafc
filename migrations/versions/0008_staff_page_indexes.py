"""staff page indexes: revenue by month, a customer's failures, search by name

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 13:40:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('invoices', schema=None) as batch_op:
        batch_op.create_index('ix_invoices_status_paid', ['status', 'paid_at'], unique=False)
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.create_index('ix_payments_provider_created', ['provider', 'created_at'], unique=False)
    with op.batch_alter_table('subscription_events', schema=None) as batch_op:
        batch_op.create_index('ix_subscription_events_transition_at', ['transition', 'at'], unique=False)
    with op.batch_alter_table('operation_errors', schema=None) as batch_op:
        batch_op.create_index('ix_operation_errors_user_next_retry', ['user_id', 'next_retry_at'], unique=False)
    op.create_index('ix_users_name_lower', 'users', [sa.text('lower(name)')], unique=False)


def downgrade():
    op.drop_index('ix_users_name_lower', table_name='users')
    with op.batch_alter_table('operation_errors', schema=None) as batch_op:
        batch_op.drop_index('ix_operation_errors_user_next_retry')
    with op.batch_alter_table('subscription_events', schema=None) as batch_op:
        batch_op.drop_index('ix_subscription_events_transition_at')
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.drop_index('ix_payments_provider_created')
    with op.batch_alter_table('invoices', schema=None) as batch_op:
        batch_op.drop_index('ix_invoices_status_paid')
