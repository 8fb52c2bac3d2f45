"""Gold labels flagged as likely wrong, reviewed as a queue of their own (reads and writes).

A gold-label check (``meiju_core.services.label_check``) opens a round of kind ``label_issues`` and writes
one ``label_issue`` row per flagged (sample, head): the gold label given, the class suggested by
out-of-sample probabilities, and cleanlab's label quality score (lower = more likely wrong).

A flag is resolved by one ``decision`` of the round with ``head`` set and action

- ``keep``: the gold label stays (``label`` = the gold label);
- ``relabel``: the gold label becomes ``label``; ``previous_label`` keeps the one it replaced, so
  the decision log holds every old label.

A flag is open while it has no such decision that is not undone. Undo appends an ``undo``
decision naming the one it compensates (``undoes_id``) and, for a relabel, puts the previous gold
label back. Decisions are never deleted. Like the pseudo-label queue, a flag is decided once: a
second decision on it is refused (:class:`db.queries.AlreadyDecided`) inside the write
transaction that would record it; and a sample on one annotator's screen is leased to them
(``review_lease``, per round and sample), so the queue does not offer it to another until the
lease expires, and another's decision on it is refused (:class:`db.queries.CardLeased`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, cast

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from db import queries as q
from db.models import (
    Decision,
    GoldLabel,
    LabelIssue,
    ReviewLease,
    ReviewRound,
    Sample,
    Transcript,
    utcnow,
)

ACTIONS = ("keep", "relabel")


def open_round(
    s: Session,
    *,
    project_id: int,
    model_version_id: int,
    issues: Sequence[dict[str, Any]],
    user_id: int | None,
    payload: dict[str, Any] | None = None,
) -> ReviewRound:
    """Open a ``label_issues`` round (closing the project's previous one; pseudo-label rounds stay
    open) holding ``issues``: ``[{"sample_id", "head", "given_label", "suggested_label",
    "score"}]``. ``payload`` (e.g. the split and counts checked) goes to the audit event.

    Raises:
        QueueError: an issue naming the same (sample, head) twice.
    """
    seen: set[tuple[int, str]] = set()
    for i in issues:
        k = (int(i["sample_id"]), str(i["head"]))
        if k in seen:
            raise q.QueueError(f"sample {k[0]} is flagged twice for {k[1]}")
        seen.add(k)
    rnd = q.open_round(
        s,
        project_id=project_id,
        model_version_id=model_version_id,
        thresholds={},
        quotas={},
        user_id=user_id,
        kind="label_issues",
    )
    s.add_all(
        LabelIssue(
            round_id=rnd.id,
            sample_id=int(i["sample_id"]),
            head=str(i["head"]),
            given_label=str(i["given_label"]),
            suggested_label=str(i["suggested_label"]),
            score=None if i.get("score") is None else float(i["score"]),
        )
        for i in issues
    )
    q.audit(
        s,
        user_id=user_id,
        action="label_check",
        entity="review_round",
        entity_id=rnd.id,
        payload={**(payload or {}), "flagged": len(issues)},
    )
    s.flush()
    return rnd


def _undone(round_id: int):
    return select(Decision.undoes_id).where(
        Decision.round_id == round_id, Decision.undoes_id.is_not(None)
    )


def _live(round_id: int):
    """Keep and relabel decisions of the round that are not undone."""
    return select(Decision).where(
        Decision.round_id == round_id,
        Decision.action.in_(ACTIONS),
        Decision.id.not_in(_undone(round_id)),
    )


def resolved(s: Session, *, round_id: int) -> dict[tuple[int, str | None], str]:
    """{(sample id, head): ``keep`` or ``relabel``} of the round's flags resolved now (one read
    of the round's decisions, by ``ix_decision_round_sample``)."""
    return {
        (sid, head): action
        for sid, head, action in s.execute(
            select(Decision.sample_id, Decision.head, Decision.action).where(
                Decision.round_id == round_id,
                Decision.action.in_(ACTIONS),
                Decision.id.not_in(_undone(round_id)),
            )
        )
    }


def leased_by_others(s: Session, *, round_id: int, user_id: int | None) -> set[int]:
    """Sample ids of the round that another user holds an unexpired lease on."""
    return set(
        s.scalars(
            select(ReviewLease.sample_id).where(
                ReviewLease.round_id == round_id,
                ReviewLease.expires_at > utcnow(),
                ReviewLease.user_id.is_distinct_from(user_id),
            )
        )
    )


def queue(
    s: Session,
    *,
    round_id: int,
    limit: int = 8,
    exclude: Iterable[tuple[int, str]] = (),
    head: str | None = None,
    user_id: int | None = None,
) -> list[dict[str, Any]]:
    """The open flags of a round, most doubtful first (lowest score, then sample id, head):
    ``[{"sample_id", "head", "given", "suggested", "score", "utt_id"}]``, at most ``limit``,
    leaving out the (sample id, head) pairs in ``exclude`` (a session's skipped cards) and the
    samples another user than ``user_id`` holds a lease on.

    Reads the resolved flags once and the round's flags in queue order until ``limit`` open
    ones are found (a round holds a few thousand flags at most)."""
    done = set(resolved(s, round_id=round_id)) | {(int(a), str(b)) for a, b in exclude}
    held = leased_by_others(s, round_id=round_id, user_id=user_id)
    stmt = (
        select(LabelIssue, Sample.utt_id)
        .join(Sample, Sample.id == LabelIssue.sample_id)
        .where(LabelIssue.round_id == round_id)
        .order_by(
            LabelIssue.score.is_(None), LabelIssue.score, LabelIssue.sample_id, LabelIssue.head
        )
    )
    if head is not None:
        stmt = stmt.where(LabelIssue.head == head)
    out = []
    for issue, utt in s.execute(stmt.limit(int(limit) + len(done) + 4 * len(held))):
        if (issue.sample_id, issue.head) in done or issue.sample_id in held:
            continue
        out.append(_row(issue, utt))
        if len(out) >= limit:
            break
    return out


def _row(issue: LabelIssue, utt_id: str) -> dict[str, Any]:
    return {
        "sample_id": issue.sample_id,
        "head": issue.head,
        "given": issue.given_label,
        "suggested": issue.suggested_label,
        "score": issue.score,
        "utt_id": utt_id,
    }


def _live_for(s: Session, round_id: int, sample_id: int, head: str) -> Decision | None:
    return s.scalars(
        _live(round_id).where(Decision.sample_id == sample_id, Decision.head == head)
    ).first()


def issue(s: Session, *, round_id: int, sample_id: int, head: str) -> dict[str, Any] | None:
    """One flag of the round (open or not), with ``utt_id`` and ``resolved`` (bool)."""
    row = s.execute(
        select(LabelIssue, Sample.utt_id)
        .join(Sample, Sample.id == LabelIssue.sample_id)
        .where(
            LabelIssue.round_id == round_id,
            LabelIssue.sample_id == sample_id,
            LabelIssue.head == head,
        )
    ).first()
    if row is None:
        return None
    return {**_row(row[0], row[1]), "resolved": _live_for(s, round_id, sample_id, head) is not None}


def lease(
    s: Session, *, round_id: int, sample_id: int, user_id: int | None, seconds: int = 120
) -> bool:
    """Reserve a flagged sample for ``user_id`` for ``seconds`` (in the caller's write
    transaction). Returns False, changing nothing, when another user holds an unexpired lease on
    it or every flag of the sample is resolved.

    Raises:
        QueueError: ``seconds`` under 1, a closed round or one of another kind.
    """
    q._check_lease_seconds(seconds)
    rnd = q._lock_round(s, round_id)
    if rnd.kind != "label_issues":
        raise q.QueueError(f"round {round_id} is not a gold-label check")
    heads = set(
        s.scalars(
            select(LabelIssue.head).where(
                LabelIssue.round_id == round_id, LabelIssue.sample_id == sample_id
            )
        )
    )
    done = {h for (sid, h) in resolved(s, round_id=round_id) if sid == sample_id}
    if not heads - done:
        return False
    return q._hold_lease(
        s, round_id=round_id, sample_id=sample_id, user_id=user_id, seconds=seconds, now=utcnow()
    )


def counts(s: Session, *, round_id: int) -> dict[str, dict[str, int]]:
    """{head: {"flagged", "open", "kept", "relabelled"}} of one round."""
    out: dict[str, dict[str, int]] = {}
    for head, n in s.execute(
        select(LabelIssue.head, func.count())
        .where(LabelIssue.round_id == round_id)
        .group_by(LabelIssue.head)
    ):
        out[head] = {"flagged": n, "open": n, "kept": 0, "relabelled": 0}
    for (_sid, flagged_head), action in resolved(s, round_id=round_id).items():
        if flagged_head is None:  # label-issue decisions always name a head
            continue
        row = out.setdefault(flagged_head, {"flagged": 0, "open": 0, "kept": 0, "relabelled": 0})
        row["kept" if action == "keep" else "relabelled"] += 1
        row["open"] -= 1
    return out


def context(s: Session, *, sample_id: int, around: int = 2) -> list[dict[str, Any]]:
    """The utterances of the sample's dialogue (``sample.group_id``) around it, in utterance-id
    order: ``[{"sample_id", "utt_id", "text", "gold": {head: label}, "this": bool}]``, at most
    ``around`` before and after; just the sample when it has no group.

    Reads the nearest utterance ids on each side through the (project, utt_id) index and keeps
    those of the same group, so it never scans the project."""
    me = s.get(Sample, sample_id)
    if me is None:
        return []
    rows = [me]
    if me.group_id is not None:
        near = 2 * around + 2
        base = select(Sample).where(Sample.project_id == me.project_id)
        before = s.scalars(
            base.where(Sample.utt_id < me.utt_id).order_by(Sample.utt_id.desc()).limit(near)
        ).all()
        after = s.scalars(
            base.where(Sample.utt_id > me.utt_id).order_by(Sample.utt_id).limit(near)
        ).all()
        rows = [r for r in reversed(before) if r.group_id == me.group_id][-around:] + [me]
        rows += [r for r in after if r.group_id == me.group_id][:around]
    ids = [r.id for r in rows]
    texts = {
        sid: text
        for sid, text in s.execute(
            select(Transcript.sample_id, Transcript.text).where(Transcript.sample_id.in_(ids))
        )
    }
    gold: dict[int, dict[str, str]] = {}
    for sid, head, label in s.execute(
        select(GoldLabel.sample_id, GoldLabel.head, GoldLabel.label).where(
            GoldLabel.sample_id.in_(ids)
        )
    ):
        gold.setdefault(sid, {})[head] = label
    return [
        {
            "sample_id": r.id,
            "utt_id": r.utt_id,
            "text": texts.get(r.id, ""),
            "gold": gold.get(r.id, {}),
            "this": r.id == sample_id,
        }
        for r in rows
    ]


def decide(
    s: Session,
    *,
    round_id: int,
    sample_id: int,
    head: str,
    action: str,
    user_id: int | None,
    label: str | None = None,
    ms_spent: int | None = None,
) -> Decision:
    """Resolve one flag: ``keep`` the gold label or ``relabel`` it to ``label`` (default: the
    suggested class), in the caller's write transaction. A relabel updates ``gold_label`` and
    records the old label in ``decision.previous_label``; a relabel to the label already given
    is a keep.

    Raises:
        QueueError: a closed round or one of another kind, an unknown action, a (sample, head)
            the round did not flag, or a sample without that gold label.
        AlreadyDecided: the flag was resolved since it was shown.
        CardLeased: another user holds an unexpired lease on the sample.
    """
    if action not in ACTIONS:
        raise q.QueueError(f"unknown action {action!r}; label issues take {list(ACTIONS)}")
    rnd = q._lock_round(s, round_id)
    if rnd.kind != "label_issues":
        raise q.QueueError(f"round {round_id} is not a gold-label check")
    flag = s.scalars(
        select(LabelIssue).where(
            LabelIssue.round_id == round_id,
            LabelIssue.sample_id == sample_id,
            LabelIssue.head == head,
        )
    ).first()
    if flag is None:
        raise q.QueueError(f"sample {sample_id} has no flagged {head} label in round {round_id}")
    q._foreign_lease(s, round_id, sample_id, user_id, utcnow(), admin_override=False)
    prior = _live_for(s, round_id, sample_id, head)
    if prior is not None:
        by = q._user_name(s, prior.user_id)
        state = "kept" if prior.action == "keep" else "relabelled"
        raise q.AlreadyDecided(sample_id, head, state, by)
    gold = s.scalars(
        select(GoldLabel).where(GoldLabel.sample_id == sample_id, GoldLabel.head == head)
    ).first()
    if gold is None:
        raise q.QueueError(f"sample {sample_id} has no gold {head} label")
    new = label or flag.suggested_label
    if action == "relabel" and new == gold.label:
        action = "keep"
    d = Decision(
        round_id=round_id,
        sample_id=sample_id,
        head=head,
        label=gold.label if action == "keep" else new,
        action=action,
        user_id=user_id,
        ms_spent=ms_spent,
        created_at=utcnow(),
        previous_label=gold.label if action == "relabel" else None,
    )
    if action == "relabel":
        gold.label = new
    s.add(d)
    s.flush()
    others = s.scalar(
        select(func.count())
        .select_from(LabelIssue)
        .where(
            LabelIssue.round_id == round_id,
            LabelIssue.sample_id == sample_id,
            LabelIssue.head != head,
        )
    )
    done = {h for (sid, h) in resolved(s, round_id=round_id) if sid == sample_id}
    if len(done) >= (others or 0) + 1:  # every flag of the sample resolved: free it
        s.execute(
            delete(ReviewLease).where(
                ReviewLease.round_id == round_id, ReviewLease.sample_id == sample_id
            )
        )
    return d


def undo(
    s: Session, *, round_id: int, user_id: int | None, decision_id: int | None = None
) -> Decision | None:
    """Compensate the user's latest keep / relabel of the round (or ``decision_id``): append an
    ``undo`` decision and, for a relabel, put ``previous_label`` back as the gold label; the flag
    opens again. Returns the decision undone, or None when there is none.

    Raises:
        QueueError: a closed round, or a relabel whose gold label was changed since (by a later
            relabel of another round, say): the label is left as it is.
    """
    q._lock_round(s, round_id)
    last = q._latest_decision(s, _live(round_id), decision_id=decision_id, user_id=user_id)
    if last is None:
        return None
    if last.action == "relabel":
        gold = s.scalars(
            select(GoldLabel).where(
                GoldLabel.sample_id == last.sample_id, GoldLabel.head == last.head
            )
        ).first()
        if gold is None or gold.label != last.label:
            now = gold.label if gold else "nothing"
            raise q.QueueError(
                f"the gold {last.head} label of this sample is {now} now, not {last.label}: "
                "it was changed since, so undo leaves it"
            )
        gold.label = cast(str, last.previous_label)  # a relabel always records it
    s.add(
        Decision(
            round_id=round_id,
            sample_id=last.sample_id,
            head=last.head,
            label=last.previous_label if last.action == "relabel" else last.label,
            action="undo",
            undoes_id=last.id,
            user_id=user_id,
            created_at=utcnow(),
            previous_label=last.label if last.action == "relabel" else None,
        )
    )
    s.flush()
    return last


def history(
    s: Session, *, round_id: int, user_id: int | None = None, limit: int = 10
) -> list[dict[str, Any]]:
    """The user's last ``limit`` keep / relabel decisions of the round, newest first:
    ``[{"decision_id", "sample_id", "utt_id", "head", "action", "label", "previous_label",
    "at", "undone"}]``."""
    stmt = (
        select(Decision, Sample.utt_id)
        .join(Sample, Sample.id == Decision.sample_id)
        .where(Decision.round_id == round_id, Decision.action.in_(ACTIONS))
    )
    if user_id is not None:
        stmt = stmt.where(Decision.user_id == user_id)
    rows = s.execute(stmt.order_by(Decision.id.desc()).limit(limit)).all()
    undone = set(
        s.scalars(select(Decision.undoes_id).where(Decision.undoes_id.in_([d.id for d, _ in rows])))
    )
    return [
        {
            "decision_id": d.id,
            "sample_id": d.sample_id,
            "utt_id": utt,
            "head": d.head,
            "action": d.action,
            "label": d.label,
            "previous_label": d.previous_label,
            "at": d.created_at,
            "undone": d.id in undone,
        }
        for d, utt in rows
    ]
