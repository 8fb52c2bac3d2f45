"""Dashboard, Transcripts and Data pages driven headless with ``AppTest``, roles included.

Same set-up as ``test_app_pages.py``: the fixture project in a temporary SQLite store, caches
cleared around each test, results checked in the database. Clicking a plotly heatmap needs a
browser (``tests/browser/test_pages_browser.py``); here the keyboard path to a confusion cell
(pick gold and predicted class, "Review these samples") sends the same query parameters.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

import pytest
import streamlit as st
from _apptest import signed_in
from sqlalchemy import func, select
from streamlit.testing.v1 import AppTest

from db import analytics as A
from db.models import Job, ModelVersion, Sample, Transcript, TranscriptEdit
from meiju_core.ml import text
from meiju_core.ml import transcript_rules as TR
from meiju_core.services import decisions, jobs, rounds, training, transcripts, users
from meiju_core.services import transcripts as TS
from meiju_core.settings import Settings

PASSWORD_HASH = users.hash_password("pw")

EMOTION_ROWS = ["happy", "surprise", "sad", "disgust", "anger", "fear", "neutral"]


def _evaluated(store, ids) -> dict:
    return training.evaluate(store, model_version_id=ids.model_version_id)


def _second_version(store, ids, metrics: dict) -> int:
    """A newer model version whose F1 is the first's plus 0.1 for every emotion class."""
    import copy

    better = copy.deepcopy(metrics)
    for split in better.values():
        for row in split["per_class"]["emotion"]:
            row["f1"] += 0.1
        split["joint"] += 0.05
    with store.write() as s:
        mv = ModelVersion(project_id=ids.project_id, name="stage2", stage=2, metrics=better)
        s.add(mv)
        s.flush()
        return mv.id


def tab(at: AppTest, name: str) -> AppTest:
    at.session_state["db_tab"] = name
    at.run()
    assert not at.exception, at.exception
    return at


# --------------------------------------------------------------------------- dashboard


def test_dashboard_model_tab_per_class_and_confusion(fx):
    store, ids = fx
    metrics = _evaluated(store, ids)
    at = signed_in(ids, page="pages/dashboard.py")
    tiles = {m.label: m.value for m in at.metric}
    assert tiles["joint"] == f"{metrics['valid']['joint']:.4f}"
    assert tiles["samples"] == "30"
    table = at.dataframe[0].value
    assert list(table["class"]) == EMOTION_ROWS
    assert list(table["support"]) == [
        r["support"] for r in metrics["valid"]["per_class"]["emotion"]
    ]
    charts = [c.key for c in at.get("plotly_chart")]
    assert charts == ["db_cm_emotion_counts", "db_cm_emotion_norm"]
    at.session_state["db_head"] = "Intent"
    at.run()
    assert [c.key for c in at.get("plotly_chart")] == ["db_cm_intent_counts", "db_cm_intent_norm"]


def test_a_confusion_cell_opens_review_with_its_samples(fx, monkeypatch):
    store, ids = fx
    sent = []  # what the dashboard hands to st.switch_page (Review then tidies its own URL)
    real = st.switch_page

    def switch_page(page, *, query_params=None):
        sent.append((page, dict(query_params or {})))
        real(page, query_params=query_params)

    monkeypatch.setattr(st, "switch_page", switch_page)
    metrics = _evaluated(store, ids)
    matrix = metrics["valid"]["confusion"]["emotion"]
    gold, pred = next(
        (EMOTION_ROWS[i], EMOTION_ROWS[j])
        for i in range(7)
        for j in range(7)
        if matrix[i][j] > 0 and i != j
    )
    at = signed_in(ids, page="pages/dashboard.py")
    at.selectbox(key="db_cell_gold_emotion").set_value(gold)
    at.selectbox(key="db_cell_pred_emotion").set_value(pred)
    at.button(key="db_cell_open_emotion").click().run()  # the Review page runs next
    with store.read() as s:
        expected = A.confusion_cell_samples(
            s,
            model_version_id=ids.model_version_id,
            head="emotion",
            gold=gold,
            pred=pred,
            split="valid",
        )
    assert len(expected) == matrix[EMOTION_ROWS.index(gold)][EMOTION_ROWS.index(pred)]
    params = {
        "model": str(ids.model_version_id),
        "head": "emotion",
        "gold": gold,
        "pred": pred,
        "split": "valid",
        "samples": ",".join(map(str, expected)),
    }
    assert sent == [("pages/review.py", params)]
    assert not any(t.value == "Dashboard" for t in at.title)
    assert at.query_params["samples"] == params["samples"]  # as Review keeps it
    # the valid samples open in Review's inspect view, with the cell's classes in their rows
    table = next(d.value for d in at.dataframe if "utterance" in d.value.columns)
    assert len(table) == len(expected)
    assert set(table["gold emotion"]) == {gold} and set(table["predicted emotion"]) == {pred}


def test_an_empty_confusion_cell_stays_on_the_dashboard(fx):
    store, ids = fx
    metrics = _evaluated(store, ids)
    matrix = metrics["test"]["confusion"]["emotion"]
    i, j = next((i, j) for i in range(7) for j in range(7) if matrix[i][j] == 0)
    at = signed_in(ids, page="pages/dashboard.py")
    at.segmented_control(key="db_split").set_value("test").run()
    at.selectbox(key="db_cell_gold_emotion").set_value(EMOTION_ROWS[i])
    at.selectbox(key="db_cell_pred_emotion").set_value(EMOTION_ROWS[j])
    at.button(key="db_cell_open_emotion").click().run()
    assert at.title[0].value == "Dashboard"
    assert any("No test sample is gold" in x.value for x in at.info)


def test_dashboard_compares_two_versions(fx):
    store, ids = fx
    metrics = _evaluated(store, ids)
    new_id = _second_version(store, ids, metrics)
    at = tab(signed_in(ids, page="pages/dashboard.py"), "Compare")
    assert at.selectbox(key="db_cmp_new").value == new_id
    assert at.selectbox(key="db_cmp_base").value == ids.model_version_id  # the promoted one
    joint = next(m for m in at.metric if m.label == "joint")
    assert joint.value == f"{metrics['valid']['joint'] + 0.05:.4f}"
    assert joint.proto.delta == "+0.0500"
    emotion, intent = (d.value for d in at.dataframe)  # one table per head
    assert list(emotion["class"]) == EMOTION_ROWS
    assert emotion["delta"].tolist() == pytest.approx([0.1] * 7)
    assert intent["delta"].tolist() == pytest.approx([0.0] * 8)
    assert sorted(c.key for c in at.get("plotly_chart")) == ["db_delta_emotion", "db_delta_intent"]


def test_compare_needs_two_versions(fx):
    store, ids = fx
    at = tab(signed_in(ids, page="pages/dashboard.py"), "Compare")
    assert any("Only one model version" in i.value for i in at.info)


def _review_some(store, ids) -> None:
    admin, ann = {"id": ids.admin_id}, {"id": ids.annotator_id}
    labels = {"emotion": "happy", "intent": "agreeing"}
    for k, user in enumerate((admin, admin, ann)):
        decisions.decide(
            store,
            round_id=ids.round_id,
            sample_id=ids.pool_ids[k],
            action="accept",
            user=user,
            labels=labels,
            ms_spent=2000 * (k + 1),
        )
    decisions.decide(
        store,
        round_id=ids.round_id,
        sample_id=ids.pool_ids[3],
        action="reject",
        user=ann,
        ms_spent=1000,
    )


def test_dashboard_pseudo_labels_annotators_and_cooccurrence(fx):
    store, ids = fx
    _review_some(store, ids)
    at = tab(signed_in(ids, page="pages/dashboard.py"), "Pseudo-labels")
    assert at.selectbox(key="db_round").value == ids.round_id
    emotion = at.dataframe[0].value.set_index("class")  # then the intent table
    assert emotion.loc["happy", "accepted"] == 3 and emotion.loc["happy", "quota"] == 5
    assert emotion.loc["happy", "left"] == 2
    assert emotion["rejected"].sum() == 1
    with store.read() as s:
        expected = A.pseudo_label_classes(s, round_id=ids.round_id)
    assert emotion["candidates"].tolist() == [r["candidates"] for r in expected["emotion"]]
    keys = {c.key for c in at.get("plotly_chart")}
    assert keys == {"db_pseudo_emotion", "db_pseudo_intent", "db_over_time"}

    at = tab(at, "Annotators")
    round_table, all_table = (d.value for d in at.dataframe)
    assert list(round_table["user"]) == ["admin", "ann"]
    assert list(round_table["cards"]) == [2, 2]
    assert round_table["median_s"].tolist() == pytest.approx([3.0, 3.5])
    assert list(all_table["cards"]) == [2, 2]

    at = tab(at, "Co-occurrence")
    keys = [c.key for c in at.get("plotly_chart")]
    assert keys == ["db_cooc_gold", "db_cooc_pseudo"]
    assert any("round #1 · 3 samples with both heads" in m.value for m in at.markdown)
    assert any("train split · 60 samples" in m.value for m in at.markdown)


def test_dashboard_refresh_shows_new_decisions(fx):
    store, ids = fx
    at = tab(signed_in(ids, page="pages/dashboard.py"), "Pseudo-labels")
    table = at.dataframe[0].value
    assert table["accepted"].sum() == 0
    _review_some(store, ids)
    at.button(key="db_refresh").click().run()
    table = at.dataframe[0].value
    assert table["accepted"].sum() == 3


def test_dashboard_for_annotators_too(fx):
    store, ids = fx
    _evaluated(store, ids)
    at = signed_in(ids, role="annotator", page="pages/dashboard.py")
    assert at.title[0].value == "Dashboard"
    for name in ("Compare", "Pseudo-labels", "Annotators", "Co-occurrence"):
        tab(at, name)


# --------------------------------------------------------------------------- transcripts


def pages_diff(before: str, after: str) -> str:
    """What the Transcripts page draws for a character diff (rebuilt from ``text.char_diff``)."""
    parts = []
    for op in text.char_diff(before, after):
        if op.op == "equal":
            parts.append(op.before)
            continue
        parts += [f"<del>{op.before}</del>"] if op.before else []
        parts += [f"<ins>{op.after}</ins>"] if op.after else []
    return f"<div class='meiju-diff' style='font-size:1.15rem'>{''.join(parts)}</div>"


def _text(store, sid: int) -> tuple[str, int]:
    with store.read() as s:
        tr = s.scalars(select(Transcript).where(Transcript.sample_id == sid)).one()
        return tr.text, tr.version


def _sid(store, utt: str) -> int:
    with store.read() as s:
        return s.scalars(select(Sample.id).where(Sample.utt_id == utt)).one()


def test_flagged_transcripts_come_first(fx):
    store, ids = fx
    with store.write() as s:  # one clean transcript
        clean = s.scalars(select(Transcript).where(Transcript.sample_id == ids.pool_ids[0])).one()
        clean.text = "好的。"
    with store.write() as s:  # a question without ？ (may change the intent) and a line
        # with only a missing final mark (nearly every CPED line): the question ranks first
        q_tr = s.scalars(select(Transcript).where(Transcript.sample_id == ids.pool_ids[5])).one()
        q_tr.text = "你吃饭了吗"
        plain = s.scalars(select(Transcript).where(Transcript.sample_id == ids.pool_ids[1])).one()
        plain.text = "我吃饭了"
    at = signed_in(ids, page="pages/transcripts.py")
    listed = at.dataframe[0].value
    flags = list(listed["flags"])
    assert flags[0] != ""
    assert flags == sorted(flags, key=lambda f: f == "")  # flagged first
    assert "question without ？" in flags[0]
    ranks = [
        max((TR.FLAG_IMPACT[c] for c in TR.FLAG_IMPACT if TR.FLAG_LABELS[c] in f), default=-1)
        for f in flags
    ]
    assert ranks == sorted(ranks, reverse=True)  # most likely to change a label first
    shares = next(c.value for c in at.caption if c.value.startswith("Flagged per kind"))
    assert "question without ？" in shares and "%" in shares
    at.toggle(key="ts_flagged").set_value(True).run()
    assert all(f for f in at.dataframe[0].value["flags"])
    at.selectbox(key="ts_code").set_value("space_as_punct").run()
    assert all("space as a clause break" in f for f in at.dataframe[0].value["flags"])


def test_query_param_opens_that_transcript_and_links_back(fx):
    store, ids = fx
    sid = ids.pool_ids[7]
    utt = f"pool_{7:06d}"
    at = signed_in(ids, page="pages/transcripts.py")
    assert at.subheader[0].value != utt
    at.query_params["sample"] = str(sid)
    at.run()
    assert not at.exception
    assert at.subheader[0].value == utt
    assert at.query_params["sample"] == str(sid)
    link = at.get("page_link")[0].proto
    assert link.label == "Back to Review"
    assert "samples" in link.query_string and str(sid) in link.query_string


def test_back_to_review_returns_to_the_queue_it_came_from(fx):
    """Opened from a filtered Review queue, the editor links back to that queue, not to a
    one-card queue of the sample (issue 9, item 7)."""
    store, ids = fx
    sid = ids.pool_ids[3]
    at = signed_in(ids, page="pages/transcripts.py")
    at.query_params["sample"] = str(sid)
    at.query_params["back"] = "head=intent&min=0.4"
    at.run()
    assert not at.exception
    link = next(p.proto for p in at.get("page_link") if p.proto.label == "Back to Review")
    assert parse_qs(link.query_string) == {"head": ["intent"], "min": ["0.4"]}
    assert "back" not in at.query_params


def test_apply_one_flag_with_its_button_then_accept_all_and_save(fx):
    store, ids = fx
    sid = _sid(store, "pool_000002")
    before, _ = _text(store, sid)
    at = signed_in(ids, page="pages/transcripts.py")
    at.query_params["sample"] = str(sid)
    at.run()
    found = TR.unique_flags(before)
    assert [b.key for b in at.button if b.key and b.key.startswith("ts_flag_")] == [
        f"ts_flag_{n}" for n in range(1, len(found) + 1)
    ]
    at.button(key="ts_flag_1").click().run()
    one = TR.apply_flags(before, [found[0]])
    assert at.text_area(key=f"ts_text_{sid}").value == one
    assert _text(store, sid) == (before, 1)  # only the box changed
    at.button(key="ts_accept").click().run()
    assert not at.exception
    assert _text(store, sid) == (text.suggest(one), 2)
    assert at.text_area(key=f"ts_text_{sid}").value == text.suggest(one)
    assert any("Saved (punctuation edit), version 2." in x.value for x in at.success)
    values = [m.value for m in at.markdown]
    assert "**Original → current**" in values  # the character diff of original vs current
    diffs = [h.proto.body for h in at.get("html")]  # drawn as html, never as markdown
    assert pages_diff(before, text.suggest(one)) in diffs
    with store.read() as s:
        edit = s.scalars(select(TranscriptEdit)).one()
    assert (edit.kind, edit.editor_id) == ("punctuation", ids.admin_id)


def test_next_flagged_moves_on(fx):
    store, ids = fx
    at = signed_in(ids, page="pages/transcripts.py")
    first = at.subheader[0].value
    at.button(key="ts_next").click().run()
    second = at.subheader[0].value
    assert second != first
    assert TR.flag_codes(_text(store, _sid(store, second))[0])


def test_bulk_rule_preview_then_confirm_saves_punctuation_edits(fx):
    store, ids = fx
    rule = TR.RULES["space_as_punct"]
    expected = TS.preview_rule(store, project_id=ids.project_id, rule=rule)
    assert expected
    at = signed_in(ids, page="pages/transcripts.py")
    at.selectbox(key="ts_rule").set_value("space_as_punct").run()
    at.button(key="ts_bulk_preview").click().run()
    assert not at.exception
    assert any(f"{len(expected)} transcripts change" in m.value for m in at.markdown)
    table = next(h.proto.body for h in at.get("html") if "meiju-utt" in h.proto.body)
    assert table.count("class='meiju-utt'") == min(len(expected), 10)
    assert expected[0].utt_id in table
    assert "<ins>，</ins>" in table or "<ins>？</ins>" in table
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(TranscriptEdit)) == 0  # nothing yet
    # someone saves one of them between the preview and the confirmation
    stale = expected[0]
    transcripts.save_transcript(
        store, sample_id=stale.sample_id, text=stale.after, expected_version=1, user=None
    )
    at.button(key="ts_bulk_apply").click().run()
    assert not at.exception
    with store.read() as s:
        edits = s.execute(
            select(TranscriptEdit.kind, TranscriptEdit.editor_id, TranscriptEdit.after)
        ).all()
    mine = [e for e in edits if e.editor_id == ids.admin_id]
    assert len(mine) == len(expected) - 1
    assert {e.kind for e in edits} == {"punctuation"}
    assert {e.after for e in mine} == {c.after for c in expected[1:]}
    warning = " ".join(w.value for w in at.warning)
    assert f"{len(expected) - 1} saved" in warning and "1 skipped" in warning
    assert stale.utt_id in warning
    assert "ts_bulk" not in at.session_state


def test_bulk_cancel_writes_nothing(fx):
    store, ids = fx
    at = signed_in(ids, page="pages/transcripts.py")
    at.selectbox(key="ts_rule").set_value("no_final_mark").run()
    at.button(key="ts_bulk_preview").click().run()
    at.button(key="ts_bulk_cancel").click().run()
    assert "ts_bulk" not in at.session_state
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(TranscriptEdit)) == 0


# --------------------------------------------------------------------------- data


def test_annotator_sees_exports_but_cannot_import(fx):
    store, ids = fx
    at = signed_in(ids, role="annotator", page="pages/data.py")
    assert at.title[0].value == "Data"
    keys = {b.key for b in at.button}
    assert "dt_export" in keys
    assert not keys & {"dt_import_csv", "dt_import_release"}
    assert not at.get("file_uploader")
    assert any("Imports are for admins" in c.value for c in at.caption)


def test_admin_imports_a_csv_as_a_job(fx):
    store, ids = fx
    at = signed_in(ids, page="pages/data.py")
    assert at.button(key="dt_import_csv").disabled
    csv = "utt_id,text,emotion,intent\nup_1,你好,happy,agreeing\nup_2,再见,sad,neutral\n"
    at.get("file_uploader")[0].set_value(("new.csv", csv.encode(), "text/csv"))
    at.run()
    at.selectbox(key="dt_csv_split").set_value("train")
    at.button(key="dt_import_csv").click().run()
    assert not at.exception
    with store.read() as s:
        job = s.scalars(select(Job)).one()
    assert (job.kind, job.status, job.created_by) == ("import", "queued", ids.admin_id)
    assert job.params["source"] == "csv" and job.params["default_split"] == "train"
    assert Path(job.params["path"]).read_text(encoding="utf-8") == csv
    assert any(f"job #{job.id}" in x.value for x in at.success)
    jobs.execute(store, Settings.load(), job.id)
    at.run()
    with store.read() as s:
        assert s.get(Job, job.id).status == "succeeded"
        assert s.scalar(select(func.count()).where(Sample.utt_id.like("up_%"))) == 2
    assert any("2 samples" in c.value for c in at.caption)


def test_release_import_checks_the_folder(fx, tmp_path):
    store, ids = fx
    at = signed_in(ids, page="pages/data.py")
    at.text_input(key="dt_release_path").input(str(tmp_path / "nope"))
    at.text_input(key="dt_release_project").input("meiju").run()
    at.button(key="dt_import_release").click().run()
    assert any("No folder" in e.value for e in at.error)
    at.text_input(key="dt_release_path").input(str(tmp_path)).run()
    at.button(key="dt_import_release").click().run()
    with store.read() as s:
        job = s.scalars(select(Job)).one()
    assert job.params == {
        "source": "release",
        "path": str(tmp_path),
        "project_name": "meiju",
        "lang": "Mandarin",
        "probe_media": True,
    }
    assert job.project_id is None


def test_export_job_then_download_buttons(fx):
    store, ids = fx
    at = signed_in(ids, role="annotator", page="pages/data.py")
    at.button(key="dt_export").click().run()
    with store.read() as s:
        job = s.scalars(select(Job)).one()
    assert job.kind == "export" and job.created_by == ids.annotator_id
    assert job.params["model_version_id"] == ids.model_version_id
    assert any("export · **queued**" in m.value for m in at.markdown)
    jobs.execute(store, Settings.load(), job.id)
    at.run()
    assert not at.exception
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == [
        "submission.csv (30 rows)",
        "labels.csv (240 rows)",
        "decisions.csv (0 rows)",
        "transcript_edits.csv (0 rows)",
    ]


def test_evidence_tab_draws_acceptance_by_confidence_from_human_decisions(fx):
    from db.evidence import review_observations
    from db.models import Prediction
    from meiju_core.errors import QuotaExceeded

    store, ids = fx
    admin = {"id": ids.admin_id}
    accepted_cards = 0
    for k, sid in enumerate(ids.pool_ids[:24]):
        action = "accept" if k % 3 else "reject"
        try:
            decisions.decide(store, round_id=ids.round_id, sample_id=sid, action=action, user=admin)
            accepted_cards += action == "accept"
        except QuotaExceeded:  # the fixture's quotas are small: a full class is a reject
            decisions.decide(
                store, round_id=ids.round_id, sample_id=sid, action="reject", user=admin
            )
    with store.write() as s:  # an automatic acceptance is no evidence
        from db import queries as q

        q.decide(
            s, round_id=ids.round_id, sample_id=ids.pool_ids[30], action="accept", user_id=None
        )
    with store.read() as s:
        obs = review_observations(s, round_id=ids.round_id)
        preds = {
            (p.sample_id, p.head): p
            for p in s.scalars(
                select(Prediction).where(Prediction.model_version_id == ids.model_version_id)
            )
        }
    assert len(obs) == 2 * 24  # both heads of each decided card, none from the automatic one
    assert accepted_cards > 3 and sum(o["accepted"] for o in obs) == 2 * accepted_cards
    for o in obs:
        assert any(
            p.head == o["head"] and p.label == o["predicted"] and p.confidence == o["confidence"]
            for (sid, h), p in preds.items()
            if sid in ids.pool_ids[:24]
        )
    at = tab(signed_in(ids, page="pages/dashboard.py"), "Evidence")
    table = at.dataframe[0].value
    assert table["reviewed"].sum() == 48 and table["accepted"].sum() == 2 * accepted_cards
    assert [c.key for c in at.get("plotly_chart")] == ["ev_chart"]
    bins = at.dataframe[-1].value  # every decision of the head shown, by bin
    assert bins["reviewed"].sum() == 24


def test_evidence_tab_opens_the_next_round_with_per_class_thresholds_in_one_click(fx):
    from db import queries as q
    from db import thresholds as thr
    from db.models import ReviewRound

    store, ids = fx
    with store.write() as s:  # room for every card: the evidence, not the quotas, is tested
        rnd = s.get(ReviewRound, ids.round_id)
        rnd.quotas = {
            h: dict.fromkeys(c, 1000)
            for h, c in A.project_schema(s, project_id=ids.project_id).items()
        }
    admin = {"id": ids.admin_id}
    for k, sid in enumerate(ids.pool_ids[:36]):
        decisions.decide(
            store,
            round_id=ids.round_id,
            sample_id=sid,
            action="reject" if k % 6 == 0 else "accept",
            user=admin,
        )
    ann = tab(signed_in(ids, role="annotator", page="pages/dashboard.py"), "Evidence")
    assert "ev_next_round" not in [b.key for b in ann.button]
    assert any("An admin can open" in c.value for c in ann.caption)
    at = tab(signed_in(ids, page="pages/dashboard.py"), "Evidence")
    at.number_input(key="ev_min_count").set_value(3).run()
    table = at.dataframe[0].value
    assert {"threshold", "round's", "next round"} <= set(table.columns)
    expected = rounds.thresholds_from_evidence(store, round_id=ids.round_id, min_count=3)
    from_review = [r for r in expected["rows"] if r["evidence"] is not None]
    assert from_review, "the fixture decisions give some class enough evidence"
    at.button(key="ev_next_round").click().run()
    assert not at.exception
    with store.read() as s:
        new = q.active_round(s, project_id=ids.project_id)
        old = s.get(ReviewRound, ids.round_id)
        assert new.id != ids.round_id and old.status == "closed" and new.created_by == ids.admin_id
        for r in expected["rows"]:
            assert thr.threshold_for(new.thresholds[r["head"]], r["class"]) == pytest.approx(
                r["next"]
            )
    assert any(f"Round #{new.id} is open" in m.value for m in at.success)
