"""cull events: which rule stopped which server, on what measured values

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cull_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("server", sa.String(255), nullable=False, server_default=""),
        sa.Column("rule", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("measured", sa.JSON, nullable=True),
        sa.Column("server_started", sa.DateTime(timezone=True), nullable=True),
        sa.Column("culled_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_cull_events_user", "cull_events", ["user"])


def downgrade() -> None:
    op.drop_index("ix_cull_events_user", "cull_events")
    op.drop_table("cull_events")
