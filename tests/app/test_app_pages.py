"""Every page of the app, driven headless with ``streamlit.testing.v1.AppTest``.

Each test builds the fixture project (``db.fixtures.build_fixture``) in a temporary SQLite store,
points ``MEIJU_*`` at it and clears Streamlit's process-wide caches, so tests never share a store.
Decisions, jobs and edits are checked in the database, not only on screen. No test trains a
model: the retrain test only checks that a queued ``train`` job row is written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _apptest import APP, TIMEOUT, signed_in
from sqlalchemy import select, update
from streamlit.testing.v1 import AppTest

from db import Store
from db import queries as q
from db.models import (
    Decision,
    Job,
    ModelVersion,
    Prediction,
    PseudoLabel,
    ReviewRound,
    Sample,
    Transcript,
    TranscriptEdit,
)
from meiju_core.schema import EMOTIONS, INTENTS
from meiju_core.services import decisions as decisions_service
from meiju_core.services import rounds as rounds_service
from meiju_core.services import transcripts, users

REPO = Path(__file__).resolve().parents[2]
PASSWORD_HASH = users.hash_password("pw")


def card_id(at: AppTest) -> int:
    return at.session_state["rv_card"]


def decisions(store: Store, sample_id: int) -> list[tuple[str | None, str]]:
    with store.read() as s:
        rows = s.scalars(
            select(Decision).where(Decision.sample_id == sample_id).order_by(Decision.id)
        )
        return [(d.head, d.action) for d in rows]


def pseudo(store: Store, sample_id: int) -> dict[str, str]:
    with store.read() as s:
        rows = s.scalars(select(PseudoLabel).where(PseudoLabel.sample_id == sample_id))
        return {p.head: p.state for p in rows}


def texts(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown) + "\n".join(c.value for c in at.caption)


# --------------------------------------------------------------------------- login


def test_login_refuses_a_wrong_password_and_admits_the_right_one(fx):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert "user" not in at.session_state
    at.text_input(key="login_name").input("admin")
    at.text_input(key="login_password").input("nope")
    at.button[0].click().run()
    assert "Wrong name or password." in [e.value for e in at.error]
    assert "user" not in at.session_state

    at.text_input(key="login_password").input("pw")
    at.button[0].click().run()
    assert not at.exception
    assert at.session_state["user"]["name"] == "admin"
    assert at.title[0].value == "Review"
    assert "Project **fixture**" in [c.value for c in at.sidebar.caption]


def test_sign_out_returns_to_the_login_form(fx):
    store, ids = fx
    at = signed_in(ids)
    at.sidebar.button(key="logout").click().run()
    assert not at.exception
    assert "user" not in at.session_state
    assert "rv_card" not in at.session_state
    # AppTest keeps the old page's hash, so the login form itself is checked in the browser test


def test_a_missing_project_is_explained(fx, monkeypatch):
    store, ids = fx
    monkeypatch.setenv("MEIJU_PROJECT", "nope")
    at = signed_in(ids)
    text = " ".join(e.value for e in at.error)
    assert "Project **nope** does not exist yet" in text
    assert "sqlite" not in text and "meiju.db" not in text  # no server paths
    assert at.sidebar.button(key="logout")


PAGES = (
    "pages/review.py",
    "pages/transcripts.py",
    "pages/training.py",
    "pages/dashboard.py",
    "pages/data.py",
)


def _all_text(at: AppTest) -> str:
    parts = []
    for kind in ("markdown", "caption", "error", "warning", "info", "success", "text", "title"):
        parts += [str(getattr(e, "value", "")) for e in getattr(at, kind)]
    parts += [h.proto.body for h in at.get("html")]
    parts += [str(b.label) for b in at.button]
    return "\n".join(parts)


@pytest.mark.parametrize("page", PAGES)
def test_no_page_shows_server_paths_class_names_or_the_worker_command(fx, tmp_path, page):
    """What users read (issue 9, item 8): no folder of the server, no exception class name, no
    `meiju worker` (an empty queue, a missing clip and the job pages included)."""
    store, ids = fx
    with store.write() as s:  # a clip that is gone: the card says so without its path
        s.execute(
            update(Sample)
            .where(Sample.split == "pool")
            .values(video_path=str(tmp_path / "gone" / "clip.mp4"))
        )
    at = signed_in(ids, page=page)
    text = _all_text(at)
    assert str(tmp_path) not in text and "/tmp/" not in text
    assert "meiju worker" not in text
    for name in ("Error:", "Exception", "Traceback", "sqlite:///"):
        assert name not in text, f"{page} shows {name!r}"


# --------------------------------------------------------------------------- review


def test_review_shows_a_pool_card_with_predictions_and_quota(fx):
    store, ids = fx
    at = signed_in(ids)
    sid = card_id(at)
    assert sid in ids.pool_ids  # only unlabelled samples are pseudo-label candidates
    assert any("meiju-transcript" in h.proto.body for h in at.get("html"))
    bars = [p.proto.text for p in at.get("progress")]
    assert sum(t.startswith("quota ") for t in bars) == 2  # one meter per head
    assert len(bars) == 2 * 3 + 2  # top three classes of both heads + the meters
    assert "left in the queue" in texts(at)


def test_the_queue_holds_only_pool_samples(fx):
    store, ids = fx
    with store.read() as s:
        queued = q.queue(s, round_id=ids.round_id, limit=10_000)
        size = q.queue_size(s, round_id=ids.round_id)
    assert queued and set(queued) <= set(ids.pool_ids)
    assert size == len(queued)


def test_filter_narrows_the_queue_to_one_class(fx):
    store, ids = fx
    at = signed_in(ids)
    at.selectbox(key="rv_f_head").set_value("intent").run()
    label = at.selectbox(key="rv_f_label_intent").options[1]
    at.selectbox(key="rv_f_label_intent").set_value(label).run()
    assert not at.exception
    for _ in range(3):
        sid = card_id(at)
        with store.read() as s:
            got = s.scalars(
                select(Prediction.label).where(
                    Prediction.sample_id == sid,
                    Prediction.head == "intent",
                    Prediction.model_version_id == ids.model_version_id,
                )
            ).one()
        assert got == label
        at.button(key="rv_skip").click().run()
        if "rv_card" not in at.session_state:
            break


def test_accept_records_decisions_and_pseudo_labels_and_shows_another_card(fx):
    store, ids = fx
    at = signed_in(ids)
    first = card_id(at)
    at.button(key="rv_accept").click().run()
    assert not at.exception
    assert decisions(store, first) == [("emotion", "accept"), ("intent", "accept")]
    assert pseudo(store, first) == {"emotion": "accepted", "intent": "accepted"}
    with store.read() as s:
        spent = s.scalars(select(Decision.ms_spent).where(Decision.sample_id == first)).all()
    assert all(ms is not None and ms >= 0 for ms in spent)
    assert card_id(at) != first
    hist = [m.value for m in at.markdown if "**accept**" in m.value]
    assert len(hist) == 1


def test_accept_one_head_keeps_the_card_for_the_other(fx):
    """I accepts intent and the card stays for emotion (issue 9, item 3); the intent button is
    then off, and A accepts the head left."""
    store, ids = fx
    with store.write() as s:  # both heads above the threshold: no confirmation asked
        s.execute(update(Prediction).values(confidence=0.95))
    at = signed_in(ids)
    first = card_id(at)
    at.button(key="rv_accept_intent").click().run()
    assert decisions(store, first) == [("intent", "accept")]
    assert pseudo(store, first) == {"intent": "accepted"}
    assert card_id(at) == first
    assert at.button(key="rv_accept_intent").disabled
    assert at.button(key="rv_accept").label == "Accept the rest [A]"
    assert any("accepted] (decided)" in m.value for m in at.markdown)
    at.button(key="rv_accept").click().run()
    assert decisions(store, first) == [("intent", "accept"), ("emotion", "accept")]
    assert card_id(at) != first


def test_accept_below_the_threshold_asks_first(fx):
    store, ids = fx
    at = signed_in(ids)
    first = card_id(at)
    with store.write() as s:  # emotion under the round's threshold (0.3), intent above
        s.execute(
            update(Prediction)
            .where(Prediction.sample_id == first, Prediction.head == "emotion")
            .values(confidence=0.1)
        )
        s.execute(
            update(Prediction)
            .where(Prediction.sample_id == first, Prediction.head == "intent")
            .values(confidence=0.9)
        )
    at.button(key="rv_accept").click().run()
    assert decisions(store, first) == []  # never silently accepted
    assert card_id(at) == first
    warning = " ".join(w.value for w in at.warning)
    assert "below the round's threshold 0.30" in warning and "again" in warning
    at.button(key="rv_accept").click().run()  # the second press confirms
    with store.read() as s:
        marks = dict(
            s.execute(
                select(Decision.head, Decision.override).where(Decision.sample_id == first)
            ).all()
        )
    assert marks == {"emotion": "below_threshold", "intent": None}
    assert card_id(at) != first


def test_a_card_decided_elsewhere_gives_way_to_the_next(fx):
    store, ids = fx
    at = signed_in(ids, role="annotator")
    first = card_id(at)
    with store.write() as s:  # meanwhile an admin rejects it (over the lease, as an override)
        q.decide(
            s,
            round_id=ids.round_id,
            sample_id=first,
            action="reject",
            user_id=ids.admin_id,
            admin_override=True,
        )
    at.button(key="rv_reject").click().run()
    assert not at.exception
    warning = " ".join(w.value for w in at.warning)
    assert "already rejected by admin" in warning and "next card" in warning
    assert card_id(at) != first
    assert [a for _, a in decisions(store, first)] == ["reject", "reject"]  # the admin's only


def test_reject_and_skip(fx):
    store, ids = fx
    at = signed_in(ids)
    first = card_id(at)
    at.button(key="rv_reject").click().run()
    assert decisions(store, first) == [("emotion", "reject"), ("intent", "reject")]
    assert pseudo(store, first) == {"emotion": "rejected", "intent": "rejected"}
    second = card_id(at)
    assert second != first
    at.button(key="rv_skip").click().run()
    assert decisions(store, second) == [(None, "skip")]
    assert pseudo(store, second) == {"*": "skipped"}
    assert card_id(at) not in (first, second)


def test_undo_brings_the_card_back_and_appends_an_undo_decision(fx):
    store, ids = fx
    at = signed_in(ids)
    first = card_id(at)
    at.button(key="rv_accept").click().run()
    assert card_id(at) != first
    at.button(key="rv_undo").click().run()
    assert not at.exception
    assert card_id(at) == first
    assert decisions(store, first) == [
        ("emotion", "accept"),
        ("intent", "accept"),
        ("emotion", "undo"),
        ("intent", "undo"),
    ]
    assert pseudo(store, first) == {}
    assert any("~~" in m.value and "(undone)" in m.value for m in at.markdown)


def test_undo_from_the_history(fx):
    store, ids = fx
    at = signed_in(ids)
    first = card_id(at)
    at.button(key="rv_reject").click().run()
    at.button(key="rv_skip").click().run()
    with store.read() as s:
        history = q.history(s, round_id=ids.round_id, user_id=ids.admin_id)
    entry = history[-1]  # the older decision: the history's last row
    assert entry["sample_id"] == first
    at.button(key=f"rv_undo_{len(history) - 1}").click().run()
    assert not at.exception
    assert card_id(at) == first
    assert pseudo(store, first) == {}


def test_full_quota_warns_and_keeps_the_card(fx):
    store, ids = fx
    at = signed_in(ids)
    first = card_id(at)
    with store.read() as s:
        label = s.scalars(
            select(Prediction.label).where(
                Prediction.sample_id == first, Prediction.head == "emotion"
            )
        ).one()
    with store.write() as s:
        rnd = s.get(ReviewRound, ids.round_id)
        quotas = json.loads(json.dumps(rnd.quotas))
        quotas["emotion"][label] = 0
        rnd.quotas = quotas
    at.button(key="rv_accept").click().run()
    assert not at.exception
    warnings = [w.value for w in at.warning]
    assert any("Quota full" in w and "emotion" in w and label in w for w in warnings), warnings
    assert card_id(at) == first
    assert decisions(store, first) == []
    at.button(key="rv_accept_intent").click().run()  # the other head still goes through
    assert decisions(store, first) == [("intent", "accept")]


def test_empty_queue_says_so(fx):
    store, ids = fx
    with store.write() as s:
        s.get(ReviewRound, ids.round_id).thresholds = {"emotion": 1.01, "intent": 1.01}
    at = signed_in(ids)
    text = " ".join(x.value for x in at.warning)
    assert "No card to review" in text
    assert "threshold (emotion ≥ 1.01, intent ≥ 1.01)" in text and "lower threshold" in text
    assert "rv_card" not in at.session_state
    assert at.button(key="rv_accept").disabled


def test_admin_opens_a_round(fx):
    store, ids = fx
    at = signed_in(ids)
    assert "Open a new round" in [e.label for e in at.expander]
    table = at.dataframe[0].value
    assert list(table.columns)[-1] == "≥ 0.99"
    assert list(table.index) == ["emotion", "intent"]
    at.number_input(key=f"rv_new_th_{ids.model_version_id}_emotion").set_value(0.6)
    at.radio(key="rv_new_strategy").set_value("proportional")
    at.number_input(key="rv_new_budget").set_value(100)
    plans = [d.value for d in at.dataframe if "queue" in getattr(d.value, "columns", ())]
    assert len(plans) == 2  # one per head: the queue each class gets before the round opens
    assert list(plans[0].columns) == ["gold", "threshold", "candidates", "quota", "queue"]
    assert (plans[0]["queue"] <= plans[0]["candidates"]).all()
    assert plans[0]["threshold"].between(0, 1).all()
    at.button(key="rv_open_round").click().run()
    assert not at.exception
    with store.read() as s:
        rounds = s.scalars(select(ReviewRound).order_by(ReviewRound.id)).all()
    assert [r.status for r in rounds] == ["closed", "open"]
    assert rounds[-1].thresholds["emotion"] == pytest.approx(0.6)
    assert sum(rounds[-1].quotas["emotion"].values()) <= 100
    assert at.session_state["rv_round"] == rounds[-1].id
    assert any(f"Round #{rounds[-1].id} is open." in x.value for x in at.success)


def test_the_open_round_form_takes_per_class_thresholds_from_review(fx):
    store, ids = fx
    for k, sid in enumerate(ids.pool_ids[:6]):  # some evidence in the open round
        decisions_service.decide(
            store,
            round_id=ids.round_id,
            sample_id=sid,
            action="reject" if k % 2 else "accept",
            user={"id": ids.admin_id},
        )
    at = signed_in(ids)
    toggle = at.toggle(key="rv_new_from_review")
    assert f"round #{ids.round_id}" in toggle.label
    toggle.set_value(True).run()
    assert not at.exception
    expected = rounds_service.thresholds_from_evidence(store, round_id=ids.round_id)
    plans = [d.value for d in at.dataframe if "queue" in getattr(d.value, "columns", ())]
    emotion = expected["thresholds"]["emotion"]
    assert dict(zip(plans[0].index, plans[0]["threshold"], strict=True)) == pytest.approx(emotion)
    at.button(key="rv_open_round").click().run()
    with store.read() as s:
        new = s.scalars(select(ReviewRound).order_by(ReviewRound.id.desc())).first()
    assert new.id != ids.round_id
    from db import thresholds as thr

    for cls, t in emotion.items():
        assert thr.threshold_for(new.thresholds["emotion"], cls) == pytest.approx(t)


def test_annotator_cannot_open_rounds_or_retrain(fx):
    store, ids = fx
    at = signed_in(ids, role="annotator")
    assert "Open a new round" not in [e.label for e in at.expander]
    assert not [b for b in at.button if b.key == "rv_open_round"]
    at.button(key="rv_accept").click().run()  # annotators do review
    assert not at.exception
    at.switch_page("pages/training.py").run()
    assert not at.exception
    assert at.button(key="tr_retrain").disabled
    assert not [b for b in at.button if b.key == "tr_promote"]


# --------------------------------------------------------------------------- training


def test_retrain_writes_one_queued_train_job(fx):
    store, ids = fx
    at = signed_in(ids, page="pages/training.py")
    assert not at.button(key="tr_retrain").disabled
    at.button(key="tr_retrain").click().run()
    assert not at.exception
    with store.read() as s:
        jobs = s.scalars(select(Job)).all()
    assert [(j.kind, j.status, j.params) for j in jobs] == [
        ("train", "queued", {"stage": 2, "round_id": ids.round_id})
    ]
    assert jobs[0].created_by == ids.admin_id
    assert at.button(key="tr_retrain").disabled  # one retrain at a time
    assert any(f"Job #{jobs[0].id}" in m.value for m in at.markdown)
    at.button(key=f"tr_cancel_{jobs[0].id}").click().run()
    with store.read() as s:
        assert s.get(Job, jobs[0].id).status == "cancelled"


def test_training_shows_live_job_figures_and_promotes(fx):
    store, ids = fx
    with store.write() as s:
        s.add(
            Job(
                project_id=ids.project_id,
                kind="train",
                status="running",
                progress=0.4,
                detail={"epoch": 4, "epochs": 10, "loss": 0.731, "valid_joint": 0.41},
                log="line one\nline two\n",
            )
        )
        s.add(ModelVersion(project_id=ids.project_id, name="stage2-test", stage=2))
    at = signed_in(ids, page="pages/training.py")
    assert at.button(key="tr_retrain").disabled
    assert [p.value for p in at.get("progress")] == [40]
    tiles = {m.label: m.value for m in at.metric}
    assert tiles["epoch"] == "4 / 10" and tiles["loss"] == "0.7310"
    assert "line two" in at.code[0].value
    names = list(at.dataframe[0].value["name"])
    assert names == ["stage2-test", "fixture-model"]
    at.button(key="tr_promote").click().run()
    with store.read() as s:
        status = {mv.name: mv.status for mv in s.scalars(select(ModelVersion))}
    assert status == {"stage2-test": "promoted", "fixture-model": "archived"}


def test_training_lists_an_ensembles_members(fx):
    store, ids = fx
    with store.write() as s:
        s.add(
            ModelVersion(
                project_id=ids.project_id,
                name="ensemble (emo 1 + int 1/2)",
                stage=1,
                preset="ensemble",
                config={"members": {"emotion": [1], "intent": [1, 2]}},
            )
        )
    at = signed_in(ids, page="pages/training.py")
    table = at.dataframe[0].value
    systems = dict(zip(table["name"], table["system"], strict=True))
    assert systems["ensemble (emo 1 + int 1/2)"] == "ensemble: emotion #1 · intent #1, #2"
    assert systems["fixture-model"] != ""  # a trained system shows its preset


def test_training_keeps_the_finished_run_while_other_jobs_queue(fx):
    """An import queued after a retrain does not replace the retrain's result on the page."""
    store, ids = fx
    with store.write() as s:
        s.add(
            Job(
                project_id=ids.project_id,
                kind="train",
                status="succeeded",
                progress=1.0,
                detail={"message": "model version 7 ready"},
                result={"model_version_id": 7},
            )
        )
        s.add(Job(project_id=ids.project_id, kind="import", status="queued"))
    at = signed_in(ids, page="pages/training.py")
    assert not at.exception
    panel = " ".join(m.value for m in at.markdown)
    assert "train · **succeeded**" in panel and "import" not in panel
    assert any("model_version_id" in c.value for c in at.caption)


def test_training_says_running_with_time_left_and_feature_loading(fx):
    store, ids = fx
    with store.write() as s:
        s.add(
            Job(
                project_id=ids.project_id,
                kind="train",
                status="running",
                progress=0.5,
                detail={"epoch": 5, "epochs": 10, "eta_seconds": 95.0, "message": "epoch 5/10"},
            )
        )
    at = signed_in(ids, page="pages/training.py")
    bar = at.get("progress")[0].proto.text
    assert bar.startswith("running:") and "about 1 min 35 s left" in bar
    with store.write() as s:
        job = s.scalars(select(Job)).one()
        job.progress, job.detail = 0.02, {"message": "loading train features: 800 of 2352"}
    at = signed_in(ids, page="pages/training.py")
    assert "loading train features: 800 of 2352" in at.get("progress")[0].proto.text


# --------------------------------------------------------------------------- dashboard


def _metrics() -> dict:
    from meiju_core.ml.metrics import evaluate

    rng = np.random.default_rng(0)
    heads = {"emotion": list(EMOTIONS), "intent": list(INTENTS)}
    report = {}
    for split in ("valid", "test"):
        y_true = {h: rng.integers(0, len(c) - 1, 30) for h, c in heads.items()}  # last: no support
        y_pred = {h: rng.integers(0, len(c), 30) for h, c in heads.items()}
        report[split] = {**evaluate(y_true, y_pred, heads), "n": 30}
    return report


def test_dashboard_renders_metrics_with_a_class_of_no_support(fx):
    store, ids = fx
    metrics = _metrics()
    with store.write() as s:
        s.get(ModelVersion, ids.model_version_id).metrics = metrics
    at = signed_in(ids, page="pages/dashboard.py")
    assert at.title[0].value == "Dashboard"
    tiles = {m.label: m.value for m in at.metric}
    assert tiles["joint"] == f"{metrics['valid']['joint']:.4f}"
    tables = [d.value for d in at.dataframe]
    emotion = tables[0]
    assert list(emotion["class"]) == list(EMOTIONS)
    assert emotion["support"].iloc[-1] == 0
    assert len(at.get("plotly_chart")) == 2  # the open head tab: counts + normalised (lazy tabs)
    at.segmented_control(key="db_split").set_value("test").run()
    assert not at.exception
    tiles = {m.label: m.value for m in at.metric}
    assert tiles["joint"] == f"{metrics['test']['joint']:.4f}"


def test_dashboard_without_metrics(fx):
    store, ids = fx
    at = signed_in(ids, page="pages/dashboard.py")
    assert any("no valid metrics" in i.value for i in at.info)


# --------------------------------------------------------------------------- transcripts


def _open_transcript(ids, utt: str) -> AppTest:
    at = signed_in(ids, page="pages/transcripts.py")
    at.text_input(key="ts_q").input(utt).run()
    assert not at.exception
    return at


def test_transcript_save_records_an_edit_with_its_editor(fx):
    store, ids = fx
    with store.read() as s:
        sid, before = s.execute(
            select(Sample.id, Transcript.text)
            .join(Transcript, Transcript.sample_id == Sample.id)
            .where(Sample.utt_id == "pool_000002")
        ).one()
    at = _open_transcript(ids, "pool_000002")
    assert at.subheader[0].value == "pool_000002"
    assert any("space_as_punct" in h.proto.body for h in at.get("html"))  # "我这堵着车 你倒睡着了"
    at.button(key="ts_suggest").click().run()
    after = at.text_area(key=f"ts_text_{sid}").value
    assert after == "我这堵着车，你倒睡着了。"
    at.button(key="ts_save").click().run()
    assert not at.exception
    with store.read() as s:
        edit = s.scalars(select(TranscriptEdit)).one()
        tr = s.scalars(select(Transcript).where(Transcript.sample_id == sid)).one()
    assert (edit.before, edit.after, edit.kind, edit.editor_id) == (
        before,
        after,
        "punctuation",
        ids.admin_id,
    )
    assert (tr.text, tr.version) == (after, 2)
    assert any("Saved (punctuation edit), version 2." in x.value for x in at.success)
    recent = at.dataframe[-1].value
    assert list(recent["editor"]) == ["admin"]


def test_transcript_stale_edit_and_html_are_refused(fx):
    store, ids = fx
    at = _open_transcript(ids, "pool_000001")
    with store.read() as s:
        sid = s.scalars(select(Sample.id).where(Sample.utt_id == "pool_000001")).one()
    at.text_area(key=f"ts_text_{sid}").input("撞车了<b>吗</b>").run()
    at.button(key="ts_save").click().run()
    assert any("plain text" in e.value for e in at.error)
    at.text_area(key=f"ts_text_{sid}").input("撞车了吗?")
    # someone else saves between the render and the click
    transcripts.save_transcript(
        store, sample_id=sid, text="撞车了吗？", expected_version=1, user=None
    )
    at.button(key="ts_save").click().run()
    assert not at.exception
    assert any("saved by someone else" in e.value for e in at.error)
    assert at.text_area(key=f"ts_text_{sid}").value == "撞车了吗?"  # the edit is kept
    assert any("overwrite" in w.value for w in at.warning)
    at.button(key="ts_reload").click().run()
    assert at.text_area(key=f"ts_text_{sid}").value == "撞车了吗？"
    with store.read() as s:
        assert s.scalars(select(Transcript.version).where(Transcript.sample_id == sid)).one() == 2


# --------------------------------------------------------------------------- layers


PAGES_SCRIPT = """
import json, sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(sys.argv[1], default_timeout=60)
at.session_state["user"] = {"id": int(sys.argv[2]), "name": "admin", "role": "admin"}
at.run()
errors = [str(e.value) for e in at.exception]
for page in ("pages/transcripts.py", "pages/training.py", "pages/dashboard.py", "pages/review.py"):
    at.switch_page(page).run()
    errors += [f"{page}: {e.value}" for e in at.exception]
at.button(key="rv_accept").click().run()
errors += [str(e.value) for e in at.exception]
print(json.dumps({"torch": "torch" in sys.modules, "errors": errors}))
"""


def test_no_page_imports_torch(fx):
    """Every page in a fresh process: the app process never loads torch (DESIGN.md, Layers)."""
    store, ids = fx
    out = subprocess.run(
        [sys.executable, "-c", PAGES_SCRIPT, APP, str(ids.admin_id)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"torch": False, "errors": []}
