"""How many demo gold labels the gold-label check flags, and how many of 50 hand-checked flags
are right.

Two steps, on the project of the settings (the demo, ``meiju demo``) after ``meiju
label-issues``:

1. ``python benchmarks/bench_label_issues.py sample``: draws 50 flags at random (seed 11) from
   the open ``label_issues`` round and writes ``benchmarks/results/label_issues_check.csv`` with
   each utterance's transcript, the two utterances before and after it in its dialogue, the gold
   label given and the class suggested, and empty ``judgement`` / ``note`` columns;
2. a person reads each row and writes ``judgement``: ``right`` (the given label is wrong and the
   flag is right to doubt it), ``wrong`` (the given label is defensible: a false flag) or
   ``unsure`` (text alone cannot tell), and ``suggested_ok`` (``yes`` / ``no`` / ``unsure``:
   whether the suggested class is the better label);
3. ``python benchmarks/bench_label_issues.py summarise`` counts the judgements and writes
   ``benchmarks/results/label_issues_check.json`` (with the flag counts of the round and a 95 %
   Wilson interval on the share of right flags).
"""

from __future__ import annotations

import csv
import json
import random
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402

from db import label_issues as li  # noqa: E402
from db import queries as q  # noqa: E402
from db.models import AuditEvent, LabelIssue, Sample, Transcript  # noqa: E402
from meiju_core.ml.pseudo import wilson_interval  # noqa: E402
from meiju_core.services import projects  # noqa: E402
from meiju_core.settings import Settings  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "label_issues_check"
N, SEED = 50, 11
FIELDS = [
    "utt_id",
    "head",
    "given",
    "suggested",
    "quality",
    "context_before",
    "transcript",
    "context_after",
    "judgement",
    "suggested_ok",
    "note",
]


def _round(store, project_id: int) -> int:
    with store.read() as s:
        rnd = q.active_round(s, project_id=project_id, kind="label_issues")
    if rnd is None:
        raise SystemExit("no open label_issues round: run `meiju label-issues` first")
    return rnd.id


def flag_counts(store, round_id: int) -> dict:
    """{"flagged": {head: n}, "checked": {head: n}, "split"} of the round."""
    with store.read() as s:
        flagged = dict(
            s.execute(
                select(LabelIssue.head, func.count())
                .where(LabelIssue.round_id == round_id)
                .group_by(LabelIssue.head)
            ).all()
        )
        event = s.scalars(
            select(AuditEvent).where(
                AuditEvent.action == "label_check", AuditEvent.entity_id == round_id
            )
        ).first()
    payload = event.payload if event else {}
    return {
        "flagged": flagged,
        "checked": payload.get("checked", {}),
        "split": payload.get("split"),
    }


def sample(store, project_id: int) -> None:
    rid = _round(store, project_id)
    with store.read() as s:
        flags = s.execute(
            select(LabelIssue, Sample.utt_id, Transcript.text)
            .join(Sample, Sample.id == LabelIssue.sample_id)
            .outerjoin(Transcript, Transcript.sample_id == Sample.id)
            .where(LabelIssue.round_id == rid)
            .order_by(LabelIssue.id)
        ).all()
        picked = random.Random(SEED).sample(flags, min(N, len(flags)))
        picked.sort(key=lambda r: (r[0].head, r[1]))
        rows = []
        for issue, utt, text in picked:
            around = li.context(s, sample_id=issue.sample_id, around=2)
            k = next(i for i, r in enumerate(around) if r["this"])

            def lines(rs, head=issue.head):
                return " | ".join(f"{r['text']} [{r['gold'].get(head, '-')}]" for r in rs)

            rows.append(
                {
                    "utt_id": utt,
                    "head": issue.head,
                    "given": issue.given_label,
                    "suggested": issue.suggested_label,
                    "quality": f"{issue.score:.4f}" if issue.score is not None else "",
                    "context_before": lines(around[:k]),
                    "transcript": text or "",
                    "context_after": lines(around[k + 1 :]),
                    "judgement": "",
                    "suggested_ok": "",
                    "note": "",
                }
            )
    path = OUT.with_suffix(".csv")
    if path.exists():
        raise SystemExit(f"{path} exists (judgements may be in it): move it away first")
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    print(f"{len(rows)} flags of round #{rid} written to {path}")


def summarise(store, project_id: int) -> dict:
    rid = _round(store, project_id)
    with OUT.with_suffix(".csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for i, r in enumerate(rows, start=2):
        if r["judgement"] not in ("right", "wrong", "unsure"):
            raise SystemExit(f"row {i}: judgement {r['judgement']!r} is not right/wrong/unsure")
        if r["suggested_ok"] not in ("yes", "no", "unsure"):
            raise SystemExit(f"row {i}: suggested_ok {r['suggested_ok']!r} is not yes/no/unsure")
    counts = flag_counts(store, rid)
    per_head = {}
    for head in sorted({r["head"] for r in rows}):
        mine = [r for r in rows if r["head"] == head]
        per_head[head] = {
            "checked": len(mine),
            **Counter(r["judgement"] for r in mine),
            "suggested_ok": dict(Counter(r["suggested_ok"] for r in mine)),
        }
    judged = Counter(r["judgement"] for r in rows)
    decided = judged["right"] + judged["wrong"]
    low, high = wilson_interval(judged["right"], decided)
    out = {
        "round_id": rid,
        "split": counts["split"],
        "gold_labels_checked": counts["checked"],
        "flagged": counts["flagged"],
        "sample": {"n": len(rows), "seed": SEED, "drawn_from": "every flag of the round"},
        "judgements": dict(judged),
        "right_share_of_decided": round(judged["right"] / decided, 4) if decided else None,
        "right_share_wilson95": [round(low, 4), round(high, 4)],
        "suggested_ok": dict(Counter(r["suggested_ok"] for r in rows)),
        "per_head": per_head,
        "method": "one reader judged each flag from the transcript and the two utterances "
        "before and after it (no audio, no video): emotion in particular is often carried by "
        "the voice and face, so 'unsure' is used where text alone cannot tell",
    }
    fl, ch = counts["flagged"], counts["checked"]
    out["summary"] = [
        {
            "figure": "Demo train gold labels flagged",
            "value": " · ".join(f"{h} {fl.get(h, 0):,} of {ch.get(h, 0):,}" for h in sorted(fl)),
            "goal": "report",
            "note": "5-fold cross-validated logistic regression on builtin features + cleanlab",
        },
        {
            "figure": f"Hand-checked flags right (of {len(rows)})",
            "value": f"{judged['right']} right · {judged['wrong']} wrong · "
            f"{judged['unsure']} unsure",
            "goal": "report",
            "note": f"right share of the decided {out['right_share_of_decided']} (Wilson 95 % "
            f"{low:.2f}-{high:.2f}); read from text and dialogue only",
        },
    ]
    OUT.with_suffix(".json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps(out, indent=1, ensure_ascii=False))
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("sample", "summarise"):
        print(__doc__)
        return 2
    settings = Settings.load()
    store = projects.open_store(settings)
    info = projects.project_info(store, name=settings.project)
    if info is None:
        raise SystemExit(f"no project {settings.project!r}: build the demo first (meiju demo)")
    (sample if argv[0] == "sample" else summarise)(store, info["id"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
