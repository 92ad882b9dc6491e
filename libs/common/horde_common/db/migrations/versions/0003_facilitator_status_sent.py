"""facilitator_status_sent: the gateway's ledger of status updates written to the facilitator

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 06:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "facilitator_status_sent",
        sa.Column("message_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("job_uuid", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("message_sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seq", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_facilitator_status_sent")),
    )
    op.create_index("ix_facilitator_status_sent_job_uuid", "facilitator_status_sent", ["job_uuid"])
    op.create_index("ix_facilitator_status_sent_sent_at", "facilitator_status_sent", ["sent_at"])


def downgrade() -> None:
    op.drop_index("ix_facilitator_status_sent_sent_at", table_name="facilitator_status_sent")
    op.drop_index("ix_facilitator_status_sent_job_uuid", table_name="facilitator_status_sent")
    op.drop_table("facilitator_status_sent")
