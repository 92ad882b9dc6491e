"""prompt_sample_taken_at: samples are reserved when a shard takes them, not when its jobs are stored

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 07:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("prompt_samples", sa.Column("taken_at", sa.DateTime(timezone=True), nullable=True))
    # A sample linked before this column existed was taken too: it must never be offered again.
    op.execute("UPDATE prompt_samples SET taken_at = created_at WHERE synthetic_job_id IS NOT NULL")
    op.create_index(
        "ix_prompt_samples_untaken",
        "prompt_samples",
        ["id"],
        postgresql_where=sa.text("taken_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_prompt_samples_untaken", table_name="prompt_samples")
    op.drop_column("prompt_samples", "taken_at")
