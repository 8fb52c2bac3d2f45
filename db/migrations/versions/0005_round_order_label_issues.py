"""queue order and kind of a round, gold-label checks

``review_round.queue_order``: the order the round's cards are served in: ``confidence`` (most
confident first, the paper's rule), ``uncertainty`` (least confident first), ``disagreement``
(cards whose heads or ensemble members disagree first) or ``rarest`` (the rarest predicted class
first, round robin over classes). ``review_round.kind``: ``pseudo`` (a pseudo-label round) or
``label_issues`` (a check of gold labels flagged as likely wrong).

``label_issue``: one flagged gold label of a ``label_issues`` round: the label given, the class
suggested by out-of-sample probabilities, and the flag's score (cleanlab's label quality, lower =
more likely wrong). ``decision.previous_label``: the gold label a ``relabel`` decision replaced,
so the decision log keeps every old label.

Revision ID: 0005_round_order
Revises: 0004_job_process
Create Date: 2026-12-02 11:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_round_order"
down_revision = "0004_job_process"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("review_round", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "queue_order", sa.String(length=16), nullable=False, server_default="confidence"
            )
        )
        batch_op.add_column(
            sa.Column("kind", sa.String(length=16), nullable=False, server_default="pseudo")
        )
    with op.batch_alter_table("decision", schema=None) as batch_op:
        batch_op.add_column(sa.Column("previous_label", sa.String(length=64), nullable=True))
    op.create_table(
        "label_issue",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("round_id", sa.Integer(), nullable=False),
        sa.Column("sample_id", sa.Integer(), nullable=False),
        sa.Column("head", sa.String(length=32), nullable=False),
        sa.Column("given_label", sa.String(length=64), nullable=False),
        sa.Column("suggested_label", sa.String(length=64), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["round_id"], ["review_round.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["sample_id"], ["sample.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("round_id", "sample_id", "head"),
    )


def downgrade() -> None:
    op.drop_table("label_issue")
    with op.batch_alter_table("decision", schema=None) as batch_op:
        batch_op.drop_column("previous_label")
    with op.batch_alter_table("review_round", schema=None) as batch_op:
        batch_op.drop_column("kind")
        batch_op.drop_column("queue_order")
