"""job runner: job stage/model, outputs table, delivery outbox columns

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 03:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stage", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("model", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("output_dir", sa.Text(), nullable=True))
    op.create_table(
        "outputs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("variant", sa.String(length=32), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "sop_instance_uid", name="uq_outputs_job_sop"),
    )
    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_outputs_job_id"), ["job_id"], unique=False)
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.alter_column("state", existing_type=sa.String(length=16), type_=sa.String(length=24), existing_nullable=False)
        batch_op.add_column(sa.Column("variant", sa.String(length=32), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("storage_commitment", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("commitment_uid", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("sent_count", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_deliveries_commitment_uid"), ["commitment_uid"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deliveries_commitment_uid"))
        batch_op.drop_column("finished_at")
        batch_op.drop_column("sent_count")
        batch_op.drop_column("commitment_uid")
        batch_op.drop_column("storage_commitment")
        batch_op.drop_column("variant")
        batch_op.alter_column("state", existing_type=sa.String(length=24), type_=sa.String(length=16), existing_nullable=False)
    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outputs_job_id"))
    op.drop_table("outputs")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("output_dir")
        batch_op.drop_column("model")
        batch_op.drop_column("stage")
