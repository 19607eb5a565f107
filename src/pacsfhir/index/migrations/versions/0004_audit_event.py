"""The audit log: one row a request to a route that needs a token (index.audit).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_INDEXED = ("recorded", "subject", "client_id", "patient", "token_patient", "study_uid")


def upgrade() -> None:
    op.create_table(
        "audit_event",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("recorded", sa.BigInteger(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("client_id", sa.Text(), nullable=True),
        sa.Column("fhir_user", sa.Text(), nullable=True),
        sa.Column("token_patient", sa.String(64), nullable=True),
        sa.Column("patient", sa.String(64), nullable=True),
        sa.Column("study_uid", sa.String(64), nullable=True),
        sa.Column("address", sa.Text(), nullable=True),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("route", sa.Text(), nullable=False),
        sa.Column("action", sa.String(1), nullable=False),
        sa.Column("outcome", sa.Integer(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("query_names", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
    )
    for column in _INDEXED:
        op.create_index(f"ix_audit_event_{column}", "audit_event", [column])


def downgrade() -> None:
    op.drop_table("audit_event")
