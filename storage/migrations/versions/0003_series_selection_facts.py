"""series: what body-part resolution and series selection look at

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 20:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.add_column(sa.Column("study_description", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("protocol_name", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("image_type", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("slice_thickness", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("kernel", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("frame_of_reference_uid", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("series", schema=None) as batch_op:
        for name in ("frame_of_reference_uid", "kernel", "slice_thickness", "image_type", "protocol_name", "study_description"):
            batch_op.drop_column(name)
