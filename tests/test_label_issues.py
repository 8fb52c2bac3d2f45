"""The gold-label issue queue over the store (issue 11, item 4): a ``label_issues`` round, keep /
relabel decisions that keep the old label, undo that puts it back, a flag decided once.

The check itself (cross-validation + cleanlab on real features) runs on the demo project in
``tests/test_pipeline.py``; here the flags are written directly on the fixture project.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from db import label_issues as li
from db import queries as q
from db.fixtures import build_fixture
from db.models import Decision, GoldLabel, ReviewLease, ReviewRound, Sample, utcnow
from meiju_core.errors import CardTaken, InputError, PermissionDenied, StoreError
from meiju_core.services import jobs, label_check
from meiju_core.settings import Settings

STORE_BACKENDS = ("sqlite", "postgresql")


@pytest.fixture
def flagged(store):
    """The fixture project with 4 flagged train gold labels in a label_issues round."""
    ids = build_fixture(store, n_pool=10)
    with store.write() as s:
        golds = s.execute(
            select(GoldLabel.sample_id, GoldLabel.head, GoldLabel.label)
            .join(Sample, Sample.id == GoldLabel.sample_id)
            .where(Sample.project_id == ids.project_id, Sample.split == "train")
            .order_by(GoldLabel.sample_id, GoldLabel.head)
            .limit(4)
        ).all()
        issues = [
            {
                "sample_id": sid,
                "head": head,
                "given_label": label,
                "suggested_label": "neutral" if label != "neutral" else "happy",
                "score": 0.4 - 0.1 * k,  # the last one is the most doubtful
            }
            for k, (sid, head, label) in enumerate(golds)
        ]
        for i in issues:  # the fixture's intents have no "neutral": suggest one they do have
            if i["head"] == "intent":
                i["suggested_label"] = (
                    "questioning" if i["given_label"] != "questioning" else "agreeing"
                )
        rnd = li.open_round(
            s,
            project_id=ids.project_id,
            model_version_id=ids.model_version_id,
            issues=issues,
            user_id=ids.admin_id,
        )
        rid = rnd.id
    return ids, rid, issues


def gold(store, sample_id: int, head: str) -> str:
    with store.read() as s:
        return s.scalars(
            select(GoldLabel.label).where(GoldLabel.sample_id == sample_id, GoldLabel.head == head)
        ).one()


def test_the_issue_round_is_a_queue_of_its_own(store, flagged):
    ids, rid, issues = flagged
    with store.read() as s:
        assert s.get(ReviewRound, rid).kind == "label_issues"
        # the pseudo-label round stays open and stays the one Review's pseudo queue reads
        assert q.active_round(s, project_id=ids.project_id).id == ids.round_id
        assert q.active_round(s, project_id=ids.project_id, kind="label_issues").id == rid
        got = li.queue(s, round_id=rid, limit=10)
    expected = sorted(issues, key=lambda i: i["score"])
    assert [(i["sample_id"], i["head"]) for i in got] == [
        (i["sample_id"], i["head"]) for i in expected
    ]
    assert got[0]["given"] == expected[0]["given_label"]
    # a second check replaces the first round; the pseudo round is untouched
    with store.write() as s:
        again = li.open_round(
            s,
            project_id=ids.project_id,
            model_version_id=ids.model_version_id,
            issues=issues[:1],
            user_id=None,
        )
        assert s.get(ReviewRound, rid).status == "closed"
        assert s.get(ReviewRound, ids.round_id).status == "open"
        assert q.active_round(s, project_id=ids.project_id, kind="label_issues").id == again.id


def test_keep_and_relabel_write_decisions_that_keep_the_old_label_and_undo_restores(store, flagged):
    ids, rid, issues = flagged
    ann = {"id": ids.annotator_id}
    first, second, third = issues[:3]
    kept = label_check.resolve(
        store,
        round_id=rid,
        sample_id=first["sample_id"],
        head=first["head"],
        action="keep",
        user=ann,
    )
    relabelled = label_check.resolve(
        store,
        round_id=rid,
        sample_id=second["sample_id"],
        head=second["head"],
        action="relabel",
        user=ann,
        ms_spent=1200,
    )
    with store.read() as s:
        k, r = s.get(Decision, kept), s.get(Decision, relabelled)
        assert (k.action, k.label, k.previous_label) == ("keep", first["given_label"], None)
        assert (r.action, r.label, r.previous_label, r.ms_spent) == (
            "relabel",
            second["suggested_label"],
            second["given_label"],
            1200,
        )
        assert li.counts(s, round_id=rid)[second["head"]]["relabelled"] == 1
        left = {(i["sample_id"], i["head"]) for i in li.queue(s, round_id=rid)}
    assert gold(store, second["sample_id"], second["head"]) == second["suggested_label"]
    assert gold(store, first["sample_id"], first["head"]) == first["given_label"]
    assert (first["sample_id"], first["head"]) not in left
    assert (second["sample_id"], second["head"]) not in left
    # a flag is decided once
    with pytest.raises(CardTaken, match="already relabelled"):
        label_check.resolve(
            store,
            round_id=rid,
            sample_id=second["sample_id"],
            head=second["head"],
            action="keep",
            user={"id": ids.admin_id},
        )
    # a class the annotator chooses (the digit keys); a bad class is refused, naming the head
    third_head = third["head"]
    choice = "sad" if third_head == "emotion" else "agreeing"
    if choice == third["given_label"]:
        choice = "fear" if third_head == "emotion" else "acknowledging"
    with pytest.raises(InputError) as e:
        label_check.resolve(
            store,
            round_id=rid,
            sample_id=third["sample_id"],
            head=third_head,
            action="relabel",
            label="joyful",
            user=ann,
        )
    assert e.value.field == third_head
    label_check.resolve(
        store,
        round_id=rid,
        sample_id=third["sample_id"],
        head=third_head,
        action="relabel",
        label=choice,
        user=ann,
    )
    assert gold(store, third["sample_id"], third_head) == choice
    # undo, newest first: the chosen class goes, then the suggested one; the flags reopen
    back = label_check.undo(store, round_id=rid, user=ann)
    assert (back["sample_id"], back["label"]) == (third["sample_id"], choice)
    assert gold(store, third["sample_id"], third_head) == third["given_label"]
    back = label_check.undo(store, round_id=rid, user=ann)
    assert back["action"] == "relabel" and back["previous_label"] == second["given_label"]
    assert gold(store, second["sample_id"], second["head"]) == second["given_label"]
    with store.read() as s:
        left = {(i["sample_id"], i["head"]) for i in li.queue(s, round_id=rid)}
        log = s.scalars(
            select(Decision).where(Decision.round_id == rid).order_by(Decision.id)
        ).all()
        hist = li.history(s, round_id=rid, user_id=ids.annotator_id)
    assert (second["sample_id"], second["head"]) in left
    assert [d.action for d in log] == ["keep", "relabel", "relabel", "undo", "undo"]
    # the log keeps every label: the undos name what they took back
    assert log[3].undoes_id == log[2].id and log[3].previous_label == choice
    assert [h["undone"] for h in hist] == [True, True, False]
    # the undone flag can be decided again
    label_check.resolve(
        store,
        round_id=rid,
        sample_id=second["sample_id"],
        head=second["head"],
        action="keep",
        user=ann,
    )
    assert gold(store, second["sample_id"], second["head"]) == second["given_label"]


def test_undo_leaves_a_gold_label_changed_since(store, flagged):
    ids, rid, issues = flagged
    i = issues[0]
    label_check.resolve(
        store, round_id=rid, sample_id=i["sample_id"], head=i["head"], action="relabel", user=None
    )
    with store.write() as s:
        s.execute(
            GoldLabel.__table__.update()
            .where(GoldLabel.sample_id == i["sample_id"], GoldLabel.head == i["head"])
            .values(label="fear" if i["head"] == "emotion" else "agreeing")
        )
    with pytest.raises(StoreError, match="changed since"):
        label_check.undo(store, round_id=rid, user=None)


def test_issue_decisions_refuse_a_pseudo_round_and_unflagged_samples(store, flagged):
    ids, rid, issues = flagged
    with pytest.raises(StoreError, match="not a gold-label check"):
        label_check.resolve(
            store,
            round_id=ids.round_id,
            sample_id=issues[0]["sample_id"],
            head=issues[0]["head"],
            action="keep",
            user=None,
        )
    with pytest.raises(StoreError, match="no flagged"):
        label_check.resolve(
            store, round_id=rid, sample_id=ids.pool_ids[0], head="emotion", action="keep", user=None
        )


def test_the_check_is_an_admin_job_on_the_io_lane(store, flagged, tmp_path):
    ids, _rid, _issues = flagged
    settings = Settings.load(data_dir=str(tmp_path), database_url=store.url)
    assert "label_check" in jobs.ADMIN_KINDS and jobs.lane_of("label_check") == "io"
    with pytest.raises(PermissionDenied):
        jobs.submit(
            store,
            settings,
            kind="label_check",
            project_id=ids.project_id,
            user={"id": ids.annotator_id, "role": "annotator"},
            enqueue=False,
        )
    job_id = jobs.submit(
        store,
        settings,
        kind="label_check",
        project_id=ids.project_id,
        user={"id": ids.admin_id, "role": "admin"},
        enqueue=False,
    )
    # the fixture project has no features: the job fails and says why
    assert jobs.execute(store, settings, job_id) is None
    from db.models import Job

    with store.read() as s:
        job = s.get(Job, job_id)
        assert job.status == "failed" and "feature" in (job.error or "")


def test_context_is_the_dialogue_around_the_utterance(store, flagged):
    ids, _rid, _issues = flagged
    with store.read() as s:
        train = dict(
            s.execute(
                select(Sample.utt_id, Sample.id).where(
                    Sample.project_id == ids.project_id, Sample.split == "train"
                )
            ).all()
        )
        mid = li.context(s, sample_id=train["train_000002"])
        first = li.context(s, sample_id=train["train_000005"], around=2)
    # the fixture groups utterances by five: train_0 is 000000-000004
    assert [r["utt_id"] for r in mid] == [f"train_00000{i}" for i in range(5)]
    assert [r["this"] for r in mid] == [False, False, True, False, False]
    assert set(mid[0]["gold"]) == {"emotion", "intent"} and mid[0]["text"]
    assert [r["utt_id"] for r in first] == ["train_000005", "train_000006", "train_000007"]


def test_a_flag_on_one_annotators_screen_is_not_offered_to_another(store, flagged):
    ids, rid, issues = flagged
    ann, admin = {"id": ids.annotator_id}, {"id": ids.admin_id}
    with store.read() as s:
        first = li.queue(s, round_id=rid, limit=1, user_id=ids.annotator_id)[0]
    assert label_check.lease(store, round_id=rid, sample_id=first["sample_id"], user=ann)
    with store.read() as s:
        theirs = li.queue(s, round_id=rid, limit=10, user_id=ids.admin_id)
        mine = li.queue(s, round_id=rid, limit=10, user_id=ids.annotator_id)
    assert first["sample_id"] not in {r["sample_id"] for r in theirs}
    assert mine[0]["sample_id"] == first["sample_id"]
    assert not label_check.lease(store, round_id=rid, sample_id=first["sample_id"], user=admin)
    with pytest.raises(CardTaken, match="being reviewed by ann") as e:
        label_check.resolve(
            store,
            round_id=rid,
            sample_id=first["sample_id"],
            head=first["head"],
            action="keep",
            user=admin,
        )
    assert e.value.decided is False
    # the holder decides; once every flag of the sample is resolved the lease is gone
    label_check.resolve(
        store,
        round_id=rid,
        sample_id=first["sample_id"],
        head=first["head"],
        action="keep",
        user=ann,
    )
    with store.read() as s:
        left = s.scalars(select(ReviewLease).where(ReviewLease.round_id == rid)).all()
        flags_of_sample = [i for i in issues if i["sample_id"] == first["sample_id"]]
    assert (len(left) == 0) == (len(flags_of_sample) == 1)
    # an expired lease hides nothing
    with store.write() as s:
        s.execute(
            ReviewLease.__table__.update()
            .where(ReviewLease.round_id == rid)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    with store.read() as s:
        assert li.queue(s, round_id=rid, limit=10, user_id=ids.admin_id) == li.queue(
            s, round_id=rid, limit=10, user_id=ids.annotator_id
        )
