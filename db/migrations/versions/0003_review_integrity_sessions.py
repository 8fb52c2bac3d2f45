"""review integrity, login sessions and login back-off

``decision.batch_id``: the id of the audit event of the bulk accept a decision belongs to, so a
bulk accept is undone as one unit and counted as one action (NULL for card decisions).
``decision.override``: why a decision went past a guard: ``below_threshold`` (an accept the
annotator confirmed for a head under the round's threshold) or ``admin_redecide`` (an admin
replaced another user's decision). NULL for ordinary decisions.

``login_session``: one row per sign-in; the browser holds its id in a signed, expiring cookie,
and sign-out (or expiry) ends the row. ``login_throttle``: failed sign-ins per user name and per
address, for the back-off.

Revision ID: 0003_review
Revises: 0002
Create Date: 2026-12-02 08:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_review"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decision", schema=None) as batch_op:
        batch_op.add_column(sa.Column("batch_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("override", sa.String(length=16), nullable=True))
        batch_op.create_index("ix_decision_batch", ["batch_id"], unique=False)
    op.create_table(
        "login_session",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["user.id"],
            name=op.f("fk_login_session_user_id_user"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_session")),
    )
    op.create_index("ix_login_session_user", "login_session", ["user_id"], unique=False)
    op.create_table(
        "login_throttle",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_login_throttle")),
    )


def downgrade() -> None:
    op.drop_table("login_throttle")
    op.drop_index("ix_login_session_user", table_name="login_session")
    op.drop_table("login_session")
    with op.batch_alter_table("decision", schema=None) as batch_op:
        batch_op.drop_index("ix_decision_batch")
        batch_op.drop_column("override")
        batch_op.drop_column("batch_id")
