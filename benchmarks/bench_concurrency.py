"""Decisions per second with 8 concurrent annotators, on SQLite and on PostgreSQL.

Builds the fixture project (``db.fixtures.build_fixture``: 4,000 pool cards, quotas large enough
never to fill) in a fresh store per database, then starts 8 annotator processes together. Each
one does what the Review page does per card, at full speed: read the next card of the queue
(``db.queries.queue``), lease it (``db.queries.lease``), then accept both heads
(``db.queries.decide``), each step its own short transaction, 200 times. Reported: decisions
per second over the wall time of the slowest annotator, and the cards decided twice (a sample
with more than one accept or reject of the same head; the goal is 0).

PostgreSQL is a throw-away local server (``db.pgserver``; ``make postgres`` installs it); the
fixture is ANALYZEd after it is built, as autovacuum would do on a running server (without
statistics the queue query takes 48 ms there instead of 13).

Usage: ``python benchmarks/bench_concurrency.py [--annotators 8] [--decisions 200]``. Writes
``benchmarks/results/concurrency.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402

from db import Store, pgserver  # noqa: E402
from db.fixtures import build_fixture  # noqa: E402
from db.models import Decision, User  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "concurrency.json"

ANNOTATOR = """
import sys, time
from db import Store
from db import queries as q
url, round_id, user_id, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
st = Store(url)
with st.read() as s:
    q.queue(s, round_id=round_id, limit=1)
print("ready", flush=True)
sys.stdin.readline()
t0 = time.perf_counter()
done = refused = 0
while done < n:
    with st.read() as s:
        ids = q.queue(s, round_id=round_id, user_id=user_id, limit=4)
    if not ids:
        break
    for sid in ids:
        with st.write() as s:
            if not q.lease(s, round_id=round_id, sample_id=sid, user_id=user_id):
                refused += 1
                continue
        try:
            with st.write() as s:
                q.decide(s, round_id=round_id, sample_id=sid, action="accept", user_id=user_id)
        except q.QueueError:
            refused += 1
            continue
        done += 1
        break
print(done, refused, time.perf_counter() - t0, flush=True)
"""


def run(url: str, annotators: int, decisions: int) -> dict:
    store = Store(url)
    store.upgrade()
    ids = build_fixture(store, n_pool=4000, quota=100_000, threshold=0.0)
    if not store.is_sqlite:  # fresh statistics, as autovacuum keeps them on a running server
        with store.write_engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
    with store.write() as s:
        users = [User(name=f"ann{k}", role="annotator") for k in range(annotators)]
        s.add_all(users)
        s.flush()
        user_ids = [u.id for u in users]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ANNOTATOR, url, str(ids.round_id), str(uid), str(decisions)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for uid in user_ids
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    t0 = time.perf_counter()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=1800)
        if p.returncode:
            raise RuntimeError(f"an annotator failed:\n{err[-3000:]}")
        outs.append(out.split())
    wall = time.perf_counter() - t0
    done = sum(int(o[0]) for o in outs)
    refused = sum(int(o[1]) for o in outs)
    with store.read() as s:
        twice = s.execute(
            select(Decision.sample_id, Decision.head)
            .where(
                Decision.round_id == ids.round_id,
                Decision.action.in_(("accept", "reject")),
                Decision.undoes_id.is_(None),
            )
            .group_by(Decision.sample_id, Decision.head)
            .having(func.count() > 1)
        ).all()
    store.dispose()
    return {
        "decisions": done,
        "refused": refused,
        "seconds": round(wall, 2),
        "per_second": round(done / wall, 1),
        "decided_twice": len({sid for sid, _ in twice}),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--annotators", type=int, default=8)
    ap.add_argument("--decisions", type=int, default=200)
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["sqlite"] = run(f"sqlite:///{tmp}/meiju.db", args.annotators, args.decisions)
    if pgserver.available():
        with pgserver.temporary_server() as base:
            url = pgserver.create_database(base, "bench")
            results["postgresql"] = run(url, args.annotators, args.decisions)
    print(f"{'database':12s} {'decisions':>9s} {'per s':>7s} {'twice':>6s} {'refused':>8s}")
    for db, r in results.items():
        print(
            f"{db:12s} {r['decisions']:9d} {r['per_second']:7.1f} {r['decided_twice']:6d} "
            f"{r['refused']:8d}"
        )
    note = (
        f"{args.annotators} annotator processes x {args.decisions} decisions (queue, lease, "
        f"accept; each its own transaction), fixture of 4,000 pool cards; "
        f"{os.cpu_count()} CPU cores shared"
    )
    summary = [
        {
            "figure": f"Decisions per second, {args.annotators} annotators, {db}",
            "value": f"{r['per_second']:.0f} /s ({r['decided_twice']} decided twice)",
            "goal": "0 decided twice",
            "note": note,
        }
        for db, r in results.items()
    ]
    RESULT.write_text(
        json.dumps(
            {
                "benchmark": "concurrency",
                "summary": summary,
                "results": results,
                "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
