"""Review's gold-label issue queue, driven headless with ``AppTest`` (issue 11, item 4): the
queue switch, the card (gold label vs suggested, the dialogue around it), keep / relabel / a
chosen class / undo, each checked in the database; the admin's button queues the check as a job.
Keys themselves need a browser (``tests/browser/test_label_issue_browser.py``); here the buttons
they press are clicked.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from db import label_issues as li
from db.models import Decision, GoldLabel, Job, Sample

REPO = Path(__file__).resolve().parents[2]
APP = str(REPO / "app.py")
TIMEOUT = 30


def flag(store, ids, n: int = 3) -> tuple[int, list[dict]]:
    """Flag the first ``n`` train emotion gold labels (suggesting "neutral", or "happy" for a
    neutral one), the first most doubtful; returns (round id, issues)."""
    with store.write() as s:
        rows = s.execute(
            select(GoldLabel.sample_id, GoldLabel.label)
            .join(Sample, Sample.id == GoldLabel.sample_id)
            .where(
                Sample.project_id == ids.project_id,
                Sample.split == "train",
                GoldLabel.head == "emotion",
            )
            .order_by(GoldLabel.sample_id)
            .limit(n)
        ).all()
        issues = [
            {
                "sample_id": sid,
                "head": "emotion",
                "given_label": label,
                "suggested_label": "neutral" if label != "neutral" else "happy",
                "score": 0.01 * (k + 1),
            }
            for k, (sid, label) in enumerate(rows)
        ]
        rnd = li.open_round(
            s,
            project_id=ids.project_id,
            model_version_id=ids.model_version_id,
            issues=issues,
            user_id=ids.admin_id,
        )
        return rnd.id, issues


def issues_page(ids, role: str = "annotator") -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    uid, name = (ids.admin_id, "admin") if role == "admin" else (ids.annotator_id, "ann")
    at.session_state["user"] = {"id": uid, "name": name, "role": role}
    at.query_params["queue"] = "issues"
    at.run()
    at.switch_page("pages/review.py").run()
    assert not at.exception, at.exception
    return at


def gold(store, sample_id: int) -> str:
    with store.read() as s:
        return s.scalars(
            select(GoldLabel.label).where(
                GoldLabel.sample_id == sample_id, GoldLabel.head == "emotion"
            )
        ).one()


def text(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown) + "\n".join(c.value for c in at.caption)


def test_the_issue_queue_keeps_relabels_and_undoes(fx):
    store, ids = fx
    rid, issues = flag(store, ids)
    at = issues_page(ids)
    assert at.session_state["rv_queue"] == "issues"
    first = issues[0]
    assert at.session_state["li_card"] == (first["sample_id"], "emotion")
    shown = text(at)
    assert f":red[{first['given_label']}] → :green[{first['suggested_label']}]" in shown
    assert "**3** of 3 flags left" in shown
    # R: relabel to the suggested class; the decision keeps the old label
    at.button(key="li_relabel").click().run()
    assert not at.exception
    assert gold(store, first["sample_id"]) == first["suggested_label"]
    with store.read() as s:
        d = s.scalars(select(Decision).where(Decision.round_id == rid)).one()
    assert (d.action, d.label, d.previous_label, d.user_id) == (
        "relabel",
        first["suggested_label"],
        first["given_label"],
        ids.annotator_id,
    )
    second = issues[1]
    assert at.session_state["li_card"] == (second["sample_id"], "emotion")
    # K: keep
    at.button(key="li_keep").click().run()
    assert gold(store, second["sample_id"]) == second["given_label"]
    # a class key: relabel to the class chosen (digit 3 = the third emotion class)
    third = issues[2]
    classes = at.session_state["li_classes"]["emotion"]
    at.button(key="li_digit_3").click().run()
    assert gold(store, third["sample_id"]) in (classes[2], third["given_label"])
    assert "No flag left to check" in "\n".join(m.value for m in at.success)
    # U: undo the class choice, then the keep; the relabel's old label is back after the third
    at.button(key="li_undo").click().run()
    assert at.session_state["li_card"] == (third["sample_id"], "emotion")
    assert gold(store, third["sample_id"]) == third["given_label"]
    at.button(key="li_undo").click().run()
    at.button(key="li_undo").click().run()
    assert gold(store, first["sample_id"]) == first["given_label"]
    with store.read() as s:
        assert len(li.queue(s, round_id=rid, user_id=ids.annotator_id)) == 3
        actions = [
            d.action
            for d in s.scalars(
                select(Decision).where(Decision.round_id == rid).order_by(Decision.id)
            )
        ]
    assert actions[:3] == ["relabel", "keep", actions[2]] and actions[3:] == ["undo"] * 3
    # the history lists them, undone ones struck through
    assert any("(undone)" in m.value for m in at.markdown)


def test_the_issue_queue_shows_the_dialogue_and_the_pseudo_queue_stays(fx):
    store, ids = fx
    flag(store, ids, n=1)
    at = issues_page(ids)
    html = "".join(h.proto.body for h in at.get("html"))
    assert "meiju-transcript" in html and "meiju-context" in html
    # switching back shows the pseudo-label queue of the open pseudo round
    at.segmented_control(key="rv_queue").set_value("pseudo").run()
    assert not at.exception
    assert at.session_state["rv_round"] == ids.round_id
    assert at.session_state.get("rv_card") is not None
    assert "queue" not in at.query_params


def test_admins_queue_the_check_as_a_job(fx):
    store, ids = fx
    ann = issues_page(ids)
    assert any("No gold-label check yet" in i.value for i in ann.info)
    assert "li_run_check" not in [b.key for b in ann.button]
    at = issues_page(ids, role="admin")
    at.button(key="li_run_check").click().run()
    assert not at.exception
    with store.read() as s:
        job = s.scalars(select(Job)).one()
    assert (job.kind, job.status, job.created_by, job.project_id) == (
        "label_check",
        "queued",
        ids.admin_id,
        ids.project_id,
    )


def test_skip_sends_the_flag_to_the_end_and_frees_it(fx):
    from db.models import ReviewLease

    store, ids = fx
    rid, issues = flag(store, ids, n=2)
    at = issues_page(ids)
    first, second = issues[0]["sample_id"], issues[1]["sample_id"]
    assert at.session_state["li_card"] == (first, "emotion")
    at.button(key="li_skip").click().run()
    assert not at.exception
    assert at.session_state["li_card"] == (second, "emotion")
    with store.read() as s:
        held = set(s.scalars(select(ReviewLease.sample_id).where(ReviewLease.round_id == rid)))
    assert held == {second}  # the skipped flag is free for others
    at.button(key="li_keep").click().run()  # the skipped flag comes back at the end
    assert at.session_state["li_card"] == (first, "emotion")
