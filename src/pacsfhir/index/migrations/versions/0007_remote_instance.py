"""Instances known from an upstream PACS but not held here (the gateway's cache): their
``blob`` is empty and ``upstream`` names where they are.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("instance", sa.Column("upstream", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("instance", "upstream")
