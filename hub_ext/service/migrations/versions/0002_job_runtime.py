"""job runtime fields: timeout, webhook, runner reference, continue options

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("timeout_seconds", sa.Integer, nullable=True))
        batch.add_column(sa.Column("notify_url", sa.Text, nullable=False, server_default=""))
        batch.add_column(sa.Column("runner", sa.String(32), nullable=False, server_default="local"))
        batch.add_column(sa.Column("runner_ref", sa.JSON, nullable=True))
        batch.add_column(
            sa.Column("copy_output", sa.Boolean, nullable=False, server_default=sa.false())
        )
        batch.add_column(
            sa.Column("notified", sa.Boolean, nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for col in (
            "notified",
            "copy_output",
            "runner_ref",
            "runner",
            "notify_url",
            "timeout_seconds",
        ):
            batch.drop_column(col)
