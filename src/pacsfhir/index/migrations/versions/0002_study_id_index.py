"""Index Study ID: an identifier search ORs accession number and Study ID, and without
this index every such search scanned the study table (50-95 ms at 100,000 studies).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_study_study_id", "study", ["StudyID"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_study_study_id", table_name="study")
