"""Rows, Columns and Bits Allocated of each instance, for QIDO-RS's default instance
attributes (PS3.18 Table 10.6.3-5). Instances indexed from now on get the file's values
(0: the file has none); rows indexed before are left NULL (not indexed yet), and a
search answers those from the instance's stored DICOM JSON (``store.local``) until the
instance is indexed again.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

COLUMNS = ("Rows", "Columns", "BitsAllocated")


def upgrade() -> None:
    for name in COLUMNS:
        op.add_column("instance", sa.Column(name, sa.Integer(), nullable=True))


def downgrade() -> None:
    for name in reversed(COLUMNS):
        op.drop_column("instance", name)
