"""job process: pid, host and attempts on the job row

A job row names the process that runs it (``pid`` on ``host``), so a running worker can tell a
job whose process is gone (the worker was killed, the machine rebooted) from one still working,
and fail it or re-queue it at once instead of waiting for a stale heartbeat. ``attempts`` counts
how many times the job was started: a re-queued train job resumes from its last epoch checkpoint,
and after ``meiju_core.services.jobs.MAX_ATTEMPTS`` starts it fails with a reason instead.

Revision ID: 0004_job_process
Revises: 0003_review
Create Date: 2026-12-02 08:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_job_process"
down_revision = "0003_review"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pid", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("host", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_column("attempts")
        batch_op.drop_column("host")
        batch_op.drop_column("pid")
