"""Roles are the server's (issue 10, item 4): every admin-only service refuses an annotator and
a demoted admin whose page still says "admin", reading the role from the store each time."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, update

from db.fixtures import build_fixture
from db.models import AuditEvent, Job, ModelVersion, ReviewRound, User
from meiju_core.errors import PermissionDenied
from meiju_core.services import decisions, ensembles, jobs, rounds, training
from meiju_core.settings import Settings


@pytest.fixture
def fx(store, tmp_path):
    ids = build_fixture(store, n_pool=10)
    settings = Settings.load(data_dir=str(tmp_path), database_url=store.url)
    return ids, settings


def _services(store, settings, ids):
    """(name, call(user)) for every admin-only service."""
    rid, mv = ids.round_id, ids.model_version_id
    with store.write() as s:
        job = Job(kind="export", params={}, project_id=ids.project_id)
        s.add(job)
        s.flush()
        job_id = job.id
    out = [
        (
            "open a round",
            lambda u: rounds.open_round(
                store, settings, project_id=ids.project_id, model_version_id=mv, user=u
            ),
        ),
        (
            "bulk accept",
            lambda u: decisions.bulk_accept(
                store, round_id=rid, items=[(ids.pool_ids[0], "emotion", "happy")], user=u
            ),
        ),
        ("promote", lambda u: training.promote(store, model_version_id=mv, user=u)),
        (
            "create an ensemble",
            lambda u: ensembles.create_ensemble(
                store,
                settings,
                project_id=ids.project_id,
                members={"emotion": [mv], "intent": [mv]},
                user=u,
            ),
        ),
        ("cancel a job", lambda u: jobs.cancel(store, job_id=job_id, user=u)),
        (
            "override a decision",
            lambda u: decisions.decide(
                store,
                round_id=rid,
                sample_id=ids.pool_ids[1],
                action="reject",
                user=u,
                admin_override=True,
            ),
        ),
    ]
    for kind in jobs.ADMIN_KINDS:  # retrain and every other heavy job
        out.append(
            (
                f"submit {kind}",
                lambda u, k=kind: jobs.submit(
                    store, settings, kind=k, project_id=ids.project_id, user=u, enqueue=False
                ),
            )
        )
    return out


def _state(store):
    with store.read() as s:
        return (
            s.scalar(select(func.count()).select_from(ReviewRound)),
            s.scalar(select(func.count()).select_from(Job)),
            tuple(s.scalars(select(ModelVersion.status).order_by(ModelVersion.id))),
            s.scalar(select(func.count()).select_from(AuditEvent)),
        )


@pytest.mark.parametrize("who", ["annotator", "demoted admin", "unknown user"])
def test_every_admin_service_refuses_non_admins(store, fx, who):
    ids, settings = fx
    if who == "annotator":
        user = {"id": ids.annotator_id, "name": "ann", "role": "annotator"}
    elif who == "demoted admin":  # signed in as admin, demoted since: the page still says admin
        with store.write() as s:
            s.execute(update(User).where(User.id == ids.admin_id).values(role="annotator"))
        user = {"id": ids.admin_id, "name": "admin", "role": "admin"}
    else:
        user = {"id": 9999, "name": "ghost", "role": "admin"}
    services = _services(store, settings, ids)
    before = _state(store)
    for name, call in services:
        with pytest.raises(PermissionDenied):
            call(user)
        assert _state(store) == before, f"{name} changed the store for a {who}"


def test_an_admin_may_use_them(store, fx):
    ids, settings = fx
    admin = {"id": ids.admin_id, "name": "admin", "role": "admin"}
    services = _services(store, settings, ids)
    for _name, call in services[1:] + services[:1]:  # open a round last: it closes this one
        call(admin)
