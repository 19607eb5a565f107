"""Patient identity: the EHR's patients (``linked_patient``, written by ``PUT
/fhir/Patient/{id}`` or looked up at the EHR), their identifiers, and the link from each
DICOM patient to the EHR patient whose identifier it matches (``patient.linked_to``).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("patient", sa.Column("linked_to", sa.String(64), nullable=True))
    op.create_index("ix_patient_linked_to", "patient", ["linked_to"])
    op.create_table(
        "linked_patient",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("resource_id", sa.String(64), nullable=False),
        sa.Column("resource", sa.Text(), nullable=False),
        sa.Column("source", sa.String(8), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.BigInteger(), nullable=False),
        sa.Column("fetched_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("resource_id"),
    )
    op.create_table(
        "linked_identifier",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("linked_pk", sa.Integer(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("system", sa.Text(), nullable=False),
        sa.Column("issuer", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["linked_pk"], ["linked_patient.pk"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_index("ix_linked_identifier_key", "linked_identifier", ["value", "system"])
    op.create_index("ix_linked_identifier_linked_pk", "linked_identifier", ["linked_pk"])


def downgrade() -> None:
    op.drop_table("linked_identifier")
    op.drop_table("linked_patient")
    op.drop_index("ix_patient_linked_to", "patient")
    op.drop_column("patient", "linked_to")
