"""organic_jobs: partial index for the V2 round-robin pointer (the newest assigned V2 row)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 07:15:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Must match `OrganicJob.__table_args__` and `selection.last_v2_miner` word for word: the planner
# uses a partial index only for a query whose WHERE implies the index predicate.
V2_ASSIGNED = "(request ->> 'message_type') = 'V2JobRequest' AND miner_hotkey <> ''"


def upgrade() -> None:
    op.create_index(
        "ix_organic_jobs_v2_assigned",
        "organic_jobs",
        ["created_at", "id"],
        postgresql_where=V2_ASSIGNED,
    )


def downgrade() -> None:
    op.drop_index("ix_organic_jobs_v2_assigned", table_name="organic_jobs")
