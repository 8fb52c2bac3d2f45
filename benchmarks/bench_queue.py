"""The review queue query on a 100,000-sample pool, with and without filters.

Builds the fixture store (``db.fixtures.build_fixture``: 100,000 pool samples, two heads, every
sample predicted, intent paths that disagree on about 15 % of the rows) in a temporary folder,
then times ``db.queries.queue`` (the next 8 cards, as the Review page asks when its prefetched
ids run out) 50 times per filter, after 3 warm-up calls:

- no filter; head + class (intent = questioning); confidence range (0.6-0.9); unseen emotion x
  intent pair (the zero cells of the fixture's gold co-occurrence); path disagreement;
- the same five again after 2,000 cards were decided (the scans skip decided rows);
- the per-rerun re-check of the 9 kept card ids (``sample_ids`` filter);
- each queue order of a round (``review_round.queue_order``: uncertainty, disagreement, rarest;
  confidence is the "no filter" row), no filter, before and after the decisions.

Also timed, without a goal: the queue count (``queue_size`` with the cached candidate count, as
the page runs it, and ``candidate_count`` itself, which the page caches per filter) and the bulk
accept preview over the whole filtered set (``decisions.bulk_preview``).

Usage: ``python benchmarks/bench_queue.py [--pool 100000] [--n 50]``. Goal: median and p95 of the
queue query under 10 ms. Writes ``benchmarks/results/queue.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402

from db import Store  # noqa: E402
from db import queries as q  # noqa: E402
from db.fixtures import build_fixture  # noqa: E402
from db.models import Prediction, ReviewRound  # noqa: E402
from meiju_core.services import decisions  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "queue.json"
GOAL_MS = 10.0
LIMIT = 8  # the Review page's prefetch


def timed(fn, n: int, warmup: int = 3) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    ms = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t) * 1000)
    ordered = sorted(ms)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "median": statistics.median(ordered),
        "p95": p95,
        "min": ordered[0],
        "max": ordered[-1],
        "n": n,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=100_000, help="pool samples in the fixture")
    ap.add_argument("--n", type=int, default=50, help="timed calls per figure")
    ap.add_argument("--decide", type=int, default=2000, help="cards decided for the second pass")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()[0]
    data_dir = Path(tempfile.mkdtemp(prefix="meiju-bench-queue-"))
    store = Store(f"sqlite:///{data_dir / 'meiju.db'}")
    store.upgrade()
    t = time.perf_counter()
    ids = build_fixture(store, n_pool=args.pool, quota=10 * args.pool)
    build_s = time.perf_counter() - t
    db_mb = (data_dir / "meiju.db").stat().st_size / 2**20
    print(f"fixture: {args.pool} pool samples in {build_s:.1f} s ({db_mb:.0f} MB)")
    with store.read() as s:
        pairs = q.unseen_pairs(s, project_id=ids.project_id)
    filters = {
        "no filter": q.QueueFilter(),
        "head + class": q.QueueFilter(head="intent", label="questioning"),
        "confidence range": q.QueueFilter(min_confidence=0.6, max_confidence=0.9),
        "unseen pair": q.QueueFilter(unseen_pairs=pairs),
        "disagreement": q.QueueFilter(disagree=True),
    }
    rid, uid = ids.round_id, ids.annotator_id
    rows: dict[str, dict] = {}
    sizes: dict[str, dict] = {}
    with store.read() as s:
        for name, flt in filters.items():
            rows[f"queue, {name}"] = timed(
                lambda flt=flt: q.queue(s, round_id=rid, flt=flt, user_id=uid, limit=LIMIT),
                args.n,
            )
            t = time.perf_counter()
            base = q.candidate_count(s, round_id=rid, flt=flt)
            count_ms = (time.perf_counter() - t) * 1000
            sizes[name] = {
                "cards": base,
                "candidate_count_ms (cached by the page)": count_ms,
                "queue_size_with_cached_base": timed(
                    lambda flt=flt, base=base: q.queue_size(s, round_id=rid, flt=flt, base=base),
                    max(10, args.n // 5),
                ),
            }
    orders = [o for o in q.QUEUE_ORDERS if o != "confidence"]

    def time_orders(label: str) -> None:
        for order in orders:
            with store.write() as w:
                w.get(ReviewRound, rid).queue_order = order
            with store.read() as s:
                rows[f"{label}order {order}"] = timed(
                    lambda: q.queue(s, round_id=rid, user_id=uid, limit=LIMIT), args.n
                )
        with store.write() as w:
            w.get(ReviewRound, rid).queue_order = "confidence"

    time_orders("queue, ")
    with store.read() as s:
        kept = q.queue(s, round_id=rid, user_id=uid, limit=9)
        recheck = q.QueueFilter(sample_ids=tuple(kept))
        rows["re-check of the 9 kept card ids"] = timed(
            lambda: q.queue(s, round_id=rid, flt=recheck, user_id=uid, limit=9), args.n
        )
        first = q.queue(s, round_id=rid, user_id=uid, limit=args.decide)
    # decide the most confident cards (the top of every scan), then time the filters again
    with store.write() as w:
        for sid in first:
            q.decide(w, round_id=rid, sample_id=sid, action="reject", user_id=ids.admin_id)
    with store.read() as s:
        for name, flt in filters.items():
            rows[f"queue after {args.decide} decisions, {name}"] = timed(
                lambda flt=flt: q.queue(s, round_id=rid, flt=flt, user_id=uid, limit=LIMIT),
                args.n,
            )
        n_pred = s.scalar(select(func.count()).select_from(Prediction))
    time_orders(f"queue after {args.decide} decisions, ")
    preview = {}
    for name in ("head + class", "disagreement"):
        t = time.perf_counter()
        res = decisions.bulk_preview(store, round_id=rid, flt=filters[name])
        preview[name] = {
            "seconds": time.perf_counter() - t,
            "candidates": sum(res["candidates"].values()),
            "selected": len(res["items"]),
        }
    load_after = os.getloadavg()[0]

    width = max(len(k) for k in rows)
    print(f"\n{'queue query (ms)':<{width}}  median     p95     max")
    for name, r in rows.items():
        print(f"{name:<{width}}  {r['median']:6.2f}  {r['p95']:6.2f}  {r['max']:6.2f}")
    print("\nqueue count: cards, candidate_count ms (cached), queue_size median ms")
    for name, z in sizes.items():
        print(
            f"  {name:<18} {z['cards']:7d}  {z['candidate_count_ms (cached by the page)']:7.1f}"
            f"  {z['queue_size_with_cached_base']['median']:6.2f}"
        )
    for name, p in preview.items():
        print(
            f"bulk preview, {name}: {p['seconds']:.2f} s over {p['candidates']} candidates, "
            f"{p['selected']} selected"
        )
    print(f"load average (1 min) before / after: {load_before:.2f} / {load_after:.2f}")

    summary = []
    for name in filters:
        r = rows[f"queue, {name}"]
        summary.append(
            {
                "figure": f"Queue query, {name} (median / p95)",
                "value": f"{r['median']:.2f} / {r['p95']:.2f} ms",
                "goal": f"< {GOAL_MS:g} ms",
                "note": f"{args.pool:,} pool samples, next {LIMIT} cards, {args.n} calls",
            }
        )
    for order in orders:
        r, a = (
            rows[f"queue, order {order}"],
            rows[f"queue after {args.decide} decisions, order {order}"],
        )
        summary.append(
            {
                "figure": f"Queue query, round order {order} (median / p95; after decisions)",
                "value": f"{r['median']:.2f} / {r['p95']:.2f} ms; {a['median']:.2f} / "
                f"{a['p95']:.2f} ms",
                "goal": f"< {GOAL_MS:g} ms",
                "note": f"{args.pool:,} pool samples, next {LIMIT} cards, {args.n} calls; after "
                f"{args.decide:,} decisions",
            }
        )
    worst_after = max(
        (rows[f"queue after {args.decide} decisions, {n}"] for n in filters),
        key=lambda r: r["p95"],
    )
    summary.append(
        {
            "figure": f"Queue query after {args.decide:,} decisions, worst filter (median / p95)",
            "value": f"{worst_after['median']:.2f} / {worst_after['p95']:.2f} ms",
            "goal": f"< {GOAL_MS:g} ms",
            "note": "the per-head scans skip decided rows",
        }
    )
    slowest = max(sizes.values(), key=lambda z: z["candidate_count_ms (cached by the page)"])
    summary.append(
        {
            "figure": "Queue count: cards matching a filter (slowest filter)",
            "value": f"{slowest['candidate_count_ms (cached by the page)']:.0f} ms",
            "goal": "",
            "note": "once per filter (cached by the page); the count after each decision "
            "subtracts decided cards in "
            f"{max(z['queue_size_with_cached_base']['median'] for z in sizes.values()):.1f} ms",
        }
    )
    summary.append(
        {
            "figure": "Fixture store with 100,000 pool samples: build time",
            "value": f"{build_s:.1f} s",
            "goal": "",
            "note": f"{n_pred:,} predictions, {db_mb:.0f} MB",
        }
    )
    out = {
        "benchmark": "queue",
        "summary": summary,
        "rows_ms": rows,
        "counts": sizes,
        "bulk_preview": preview,
        "config": {"pool": args.pool, "n": args.n, "limit": LIMIT, "decided": args.decide},
        "fixture": {"build_seconds": build_s, "db_mb": db_mb, "predictions": n_pred},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_1min": {"before": load_before, "after": load_after},
        },
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULT.relative_to(ROOT)}")
    store.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
