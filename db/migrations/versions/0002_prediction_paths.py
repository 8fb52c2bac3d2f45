"""prediction paths and queue indexes

Adds ``prediction.paths`` (nullable JSON: each interaction path's argmax class for a head with
several paths, e.g. the intent ensemble) for the review queue's disagreement filter, and reshapes
the prediction indexes for the per-head queue scans: ``ix_prediction_queue`` gains ``sample_id``
and ``label`` (a covering index for a scan by confidence), ``ix_prediction_class`` (also covering)
serves a scan of one predicted class by confidence.

Two decision indexes keep the Review page's history read short however long the round runs:
``ix_decision_round_user`` (a user's decisions in a round, in id order) and ``ix_decision_undoes``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 07:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("prediction", schema=None) as batch_op:
        batch_op.add_column(sa.Column("paths", sa.JSON(none_as_null=True), nullable=True))
        batch_op.drop_index("ix_prediction_queue")
        batch_op.create_index(
            "ix_prediction_queue",
            ["model_version_id", "head", "confidence", "sample_id", "label"],
            unique=False,
        )
        batch_op.create_index(
            "ix_prediction_class",
            ["model_version_id", "head", "label", "confidence", "sample_id"],
            unique=False,
        )
    with op.batch_alter_table("decision", schema=None) as batch_op:
        batch_op.create_index("ix_decision_round_user", ["round_id", "user_id"], unique=False)
        batch_op.create_index("ix_decision_undoes", ["undoes_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("decision", schema=None) as batch_op:
        batch_op.drop_index("ix_decision_undoes")
        batch_op.drop_index("ix_decision_round_user")
    with op.batch_alter_table("prediction", schema=None) as batch_op:
        batch_op.drop_index("ix_prediction_class")
        batch_op.drop_index("ix_prediction_queue")
        batch_op.create_index(
            "ix_prediction_queue", ["model_version_id", "head", "confidence"], unique=False
        )
        batch_op.drop_column("paths")
