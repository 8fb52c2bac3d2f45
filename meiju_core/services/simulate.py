"""A simulated annotator: what an hour of review buys (``meiju simulate-review``,
benchmarks/bench_review_value.py).

On a project whose pool keeps withheld labels (the demo: ``Sample.withheld``, the CPED labels of
pool utterances, never shown in the app), a simulated annotator works a review round through the
service calls the Review page makes for one card (pages/review.py):

1. ``db.queries.queue`` (limit 1, in the round's queue order) reads the next card;
2. ``db.queries.lease`` reserves it in a write transaction (a card another user holds is passed);
3. ``decisions.decide`` records the verdict: accept both heads (key A), accept one head and reject
   the other (E or I, then X), reject (X), or correct a head (the digit keys set the right class,
   then A); a quota refusal (``QuotaExceeded``) turns that head into a reject, an accept under
   the round's threshold is confirmed as the page's second press does;
4. now and then ``decisions.undo`` (key U) takes the last card back, and the annotator decides it
   again, as the page shows the returned card first.

The annotator accepts a head whose pseudo-label equals the withheld label; otherwise it rejects
it (action ``reject``) or sets the withheld class (action ``correct``). With probability
``error_rate`` per head it errs: it accepts a wrong pseudo-label, or rejects (``reject``) or
mis-corrects to another class (``correct``) a right one. A head with no withheld label (GRID and
Mandarin-speech pool clips, a CPED label outside the schema) cannot be confirmed: it is rejected.
Each card costs ``seconds_per_decision`` seconds, a card with a correction twice that.

The benchmark (:func:`run_review_value`) measures, per seed, the test joint score of stage 2
(gold + the round's accepted and corrected pseudo-labels, fine-tuned from that seed's stage-1
model, epoch chosen on valid) after every ``every`` cards, for each queue order and action;
beside them, on the same x-axis: the automatic rule (``decisions.auto_pseudo_label`` taking as
many pool samples, no review), gold labelling of as many random pool samples (their withheld
labels used directly; a labeller's card costs what a correction costs), and stage 2 on gold
alone. Every figure is on test; checkpoints and calibration use valid only.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from db import Store
from db import queries as q
from db.models import Decision, ModelVersion, Prediction, Project, PseudoLabel, ReviewRound, Sample
from meiju_core.errors import BelowThreshold, CardTaken, InputError, QuotaExceeded

ACTIONS = ("reject", "correct")
DEFAULT_SECONDS = 3.0  # seconds per card when the dashboard has no throughput figures yet
SIMULATED_USER = "simulated-annotator"
# the benchmark's rounds take every pool card (a softmax maximum is at least 1 / classes; the
# automatic rule refuses a threshold of 0)
MIN_THRESHOLD = 1e-3

Progress = Callable[[dict[str, Any]], Any]


def _noop(_e: dict[str, Any]) -> None:
    return None


# --------------------------------------------------------------------------- the annotator


@dataclass(frozen=True)
class ReviewerOptions:
    """How the simulated annotator works.

    Attributes:
        action: ``reject`` (a wrong pseudo-label is rejected) or ``correct`` (the withheld class
            is set with the override keys; the card then costs twice the seconds).
        error_rate: probability, per head, that the annotator errs (0 <= p < 1; default 5 %).
        seconds_per_decision: seconds per card (> 0); None: the median of the dashboard's
            throughput figures for the project (``db.analytics.annotator_throughput``), else 3 s.
        undo_rate: probability, after a card, of pressing undo and deciding that card again.
        seed: seeds the errors and undos.
    """

    action: str = "correct"
    error_rate: float = 0.05
    seconds_per_decision: float | None = None
    undo_rate: float = 0.01
    seed: int = 0

    def check(self) -> None:
        """Raises InputError naming the field that is out of range."""
        if self.action not in ACTIONS:
            raise InputError(
                f"action {self.action!r} is not one of {', '.join(ACTIONS)}", field="action"
            )
        for name in ("error_rate", "undo_rate"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1:
                raise InputError(f"{name} must be in [0, 1), got {v!r}", field=name)
        s = self.seconds_per_decision
        if s is not None and (isinstance(s, bool) or not isinstance(s, int | float) or not s > 0):
            raise InputError(f"seconds per decision must be > 0, got {s!r}", field="seconds")


@dataclass
class ReviewLog:
    """What one simulated session did.

    Attributes:
        cards: cards decided and not undone (the x-axis "decisions").
        seconds: simulated annotator seconds, undone work included.
        service_calls: {"queue", "lease", "decide", "undo"}: calls made.
        accepted / corrected / rejected: heads of the annotator's live (not undone) decisions:
            accepted as predicted, accepted with another class, rejected.
        errors: heads where the annotator erred.
        undos: undos pressed (each card decided again).
        lease_refused: cards the lease refused (held by another user or decided meanwhile).
        quota_refused: accepts the quota refused (that head was rejected instead).
        checkpoints: ``[{"cards", "seconds", "labels": {"sample_id:head": class}}]`` after every
            ``every`` cards (and at the end): the round's accepted pseudo-labels at that moment.
        exhausted: the queue ran out before the budget.
    """

    cards: int = 0
    seconds: float = 0.0
    service_calls: dict[str, int] = field(
        default_factory=lambda: {"queue": 0, "lease": 0, "decide": 0, "undo": 0}
    )
    accepted: int = 0
    corrected: int = 0
    rejected: int = 0
    errors: int = 0
    undos: int = 0
    lease_refused: int = 0
    quota_refused: int = 0
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    exhausted: bool = False


def withheld_labels(store, *, project_id: int) -> dict[int, dict[str, str | None]]:
    """{pool sample id: {head: withheld class or None}} from ``Sample.withheld``: a class that
    is not in the project's schema (or missing) is None. Samples without withheld labels are
    left out."""
    with store.read() as s:
        schema = s.scalar(select(Project.label_schema).where(Project.id == project_id)) or {}
        rows = s.execute(
            select(Sample.id, Sample.withheld).where(
                Sample.project_id == project_id,
                Sample.split == "pool",
                Sample.withheld.is_not(None),
            )
        ).all()
    out = {}
    for sid, w in rows:
        labels = {h: (w.get(h) if w.get(h) in classes else None) for h, classes in schema.items()}
        if any(v is not None for v in labels.values()):
            out[sid] = labels
    return out


def median_seconds(store, *, project_id: int) -> float:
    """Median seconds per card of the project's annotators (the dashboard's throughput figures,
    the simulated annotator left out), else :data:`DEFAULT_SECONDS`."""
    from db.analytics import annotator_throughput

    with store.read() as s:
        rows = annotator_throughput(s, project_id=project_id)
    medians = [r["median_s"] for r in rows if r["median_s"] and r["user"] != SIMULATED_USER]
    return float(statistics.median(medians)) if medians else DEFAULT_SECONDS


def simulated_user(store) -> dict[str, Any]:
    """The simulated annotator's user row (created as an annotator when missing)."""
    from meiju_core.services import users

    uid = users.add_user(store, name=SIMULATED_USER, role="annotator")
    return {"id": uid, "name": SIMULATED_USER, "role": "annotator"}


class _Annotator:
    def __init__(
        self,
        store,
        *,
        round_id: int,
        user: dict[str, Any],
        truth: dict[int, dict[str, str | None]],
        options: ReviewerOptions,
        seconds: float,
        lease_seconds: int,
    ):
        self.store, self.round_id, self.user = store, round_id, user
        self.truth, self.o, self.spd = truth, options, seconds
        self.lease_seconds = lease_seconds
        self.rng = random.Random(options.seed)
        self.log = ReviewLog()
        with store.read() as s:
            rnd = s.get(ReviewRound, round_id)
            self.heads = list(rnd.thresholds)
            self.mv_id = rnd.model_version_id
            self.classes = (
                s.scalar(select(Project.label_schema).where(Project.id == rnd.project_id)) or {}
            )

    # one card: the same calls as the page, in the same order
    def next_card(self) -> int | None:
        self.log.service_calls["queue"] += 1
        with self.store.read() as s:
            ids = q.queue(s, round_id=self.round_id, user_id=self.user["id"], limit=1)
        return ids[0] if ids else None

    def lease(self, sample_id: int) -> bool:
        self.log.service_calls["lease"] += 1
        with self.store.write() as s:
            return q.lease(
                s,
                round_id=self.round_id,
                sample_id=sample_id,
                user_id=self.user["id"],
                seconds=self.lease_seconds,
            )

    def _verdicts(self, sample_id: int, open_heads: list[str], predicted: dict[str, str]):
        """{head: ("accept", None) | ("reject", None) | ("correct", class)} and the errors."""
        truth = self.truth.get(sample_id, {})
        out: dict[str, tuple[str, str | None]] = {}
        errors = 0
        for head in open_heads:
            t, p = truth.get(head), predicted[head]
            err = self.rng.random() < self.o.error_rate
            errors += err
            if t is None:  # nothing to confirm it against: the annotator rejects it
                out[head] = ("accept", None) if err else ("reject", None)
            elif (p == t) != err:  # a right pseudo-label seen right, or a wrong one missed
                out[head] = ("accept", None)
            elif self.o.action == "reject":
                out[head] = ("reject", None)
            else:
                target: str | None = t
                if err:  # a right pseudo-label "corrected" to another class
                    others = [c for c in self.classes.get(head, []) if c != p]
                    target = self.rng.choice(others) if others else None
                out[head] = ("correct", target) if target else ("reject", None)
        return out, errors

    def _decide(
        self, sample_id: int, action: str, heads: list[str] | None, labels=None, ms: int = 0
    ) -> bool:
        from meiju_core.services import decisions

        for confirm in (False, True):  # the page asks a second press under the threshold
            self.log.service_calls["decide"] += 1
            try:
                decisions.decide(
                    self.store,
                    round_id=self.round_id,
                    sample_id=sample_id,
                    action=action,
                    user=self.user,
                    heads=heads,
                    labels=labels,
                    ms_spent=ms,
                    confirm_below_threshold=confirm,
                )
                return True
            except BelowThreshold:
                continue
        return False

    def decide_card(self, sample_id: int) -> bool:
        """Decide the open heads of a leased card; False when it was taken meanwhile."""
        with self.store.read() as s:
            cards = q.load_cards(s, model_version_id=self.mv_id, sample_ids=[sample_id])
            done = set(
                s.scalars(
                    select(PseudoLabel.head).where(
                        PseudoLabel.round_id == self.round_id,
                        PseudoLabel.sample_id == sample_id,
                        PseudoLabel.head != q.SKIP_HEAD,
                    )
                )
            )
        if not cards:
            return False
        predicted = {h: p["label"] for h, p in cards[0].predictions.items()}
        open_heads = [h for h in self.heads if h not in done and h in predicted]
        verdicts, errors = self._verdicts(sample_id, open_heads, predicted)
        accept = [h for h in open_heads if verdicts[h][0] != "reject"]
        corrections = {h: v[1] for h, v in verdicts.items() if v[0] == "correct"}
        ms = int(self.spd * (2 if corrections else 1) * 1000)
        try:
            while accept:
                try:
                    # A (all open heads) or E / I (one head, the card stays for the other)
                    only = None if len(accept) == len(open_heads) else accept
                    labels = {h: corrections[h] for h in accept if h in corrections} or None
                    if not self._decide(sample_id, "accept", only, labels, ms):
                        return False
                    break
                except QuotaExceeded as e:  # quota full: that head is rejected instead
                    self.log.quota_refused += 1
                    accept = [h for h in accept if h != e.head]
                    corrections.pop(e.head, None)
            rest = [h for h in open_heads if h not in accept]
            # X: the heads still open (its time is counted with the card's)
            if rest and not self._decide(sample_id, "reject", None, ms=0 if accept else ms):
                return False
        except CardTaken:
            return False
        self.log.errors += errors
        self.log.seconds += ms / 1000.0
        return True

    def undo_and_redo(self) -> None:
        """U: the last card comes back and is decided again (the page shows it first)."""
        from meiju_core.services import decisions

        self.log.service_calls["undo"] += 1
        sid = decisions.undo(self.store, round_id=self.round_id, user=self.user)
        if sid is None:
            return
        self.log.undos += 1
        self.log.seconds += self.spd  # the undo press and a second look
        if not (self.lease(sid) and self.decide_card(sid)):
            self.log.cards -= 1

    def count_heads(self) -> None:
        """accepted / corrected / rejected heads of this annotator's live decisions."""
        with self.store.read() as s:
            rows = s.execute(
                select(PseudoLabel.state, PseudoLabel.label, Prediction.label)
                .join(
                    Prediction,
                    (Prediction.sample_id == PseudoLabel.sample_id)
                    & (Prediction.head == PseudoLabel.head)
                    & (Prediction.model_version_id == self.mv_id),
                )
                .join(Decision, Decision.id == PseudoLabel.decision_id)
                .where(
                    PseudoLabel.round_id == self.round_id,
                    Decision.user_id == self.user["id"],
                )
            ).all()
        for state, label, predicted in rows:
            if state != "accepted":
                self.log.rejected += 1
            elif label == predicted:
                self.log.accepted += 1
            else:
                self.log.corrected += 1

    def snapshot(self) -> dict[str, Any]:
        with self.store.read() as s:
            rows = s.execute(
                select(PseudoLabel.sample_id, PseudoLabel.head, PseudoLabel.label).where(
                    PseudoLabel.round_id == self.round_id, PseudoLabel.state == "accepted"
                )
            ).all()
        return {
            "cards": self.log.cards,
            "seconds": round(self.log.seconds, 3),
            "labels": {f"{sid}:{head}": label for sid, head, label in rows},
        }


def simulate_review(
    store,
    *,
    round_id: int,
    truth: dict[int, dict[str, str | None]],
    options: ReviewerOptions = ReviewerOptions(),
    budget: int = 2000,
    every: int = 250,
    user: dict[str, Any] | None = None,
    lease_seconds: int = 120,
    progress: Progress = _noop,
) -> ReviewLog:
    """Work ``round_id`` as the simulated annotator until ``budget`` cards are decided or the
    queue is empty, through the Review page's service calls (module docstring).

    Args:
        truth: {sample id: {head: class or None}} (:func:`withheld_labels`).
        budget: cards to decide (>= 1).
        every: a checkpoint (the round's accepted pseudo-labels) after every ``every`` cards
            (>= 1), and one at the end.
        user: who decides (default: :func:`simulated_user`, an annotator).
    Returns:
        The :class:`ReviewLog`.
    Raises:
        InputError: a bad option (named), a budget or ``every`` under 1.
    """
    options.check()
    for name, v in (("budget", budget), ("every", every)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{name} must be a whole number >= 1, got {v!r}", field=name)
    user = user or simulated_user(store)
    with store.read() as s:
        rnd = s.get(ReviewRound, round_id)
        if rnd is None:
            raise InputError(f"no review round {round_id}", field="round")
        project_id = rnd.project_id
    seconds = options.seconds_per_decision or median_seconds(store, project_id=project_id)
    a = _Annotator(
        store,
        round_id=round_id,
        user=user,
        truth=truth,
        options=options,
        seconds=seconds,
        lease_seconds=lease_seconds,
    )
    passed: set[int] = set()  # cards the lease refused, not asked again in this session
    while a.log.cards < budget:
        sid = a.next_card()
        if sid is None or sid in passed:
            a.log.exhausted = True
            break
        if not a.lease(sid):
            a.log.lease_refused += 1
            passed.add(sid)
            continue
        if not a.decide_card(sid):
            continue
        a.log.cards += 1
        if options.undo_rate and a.rng.random() < options.undo_rate:
            a.undo_and_redo()
        if a.log.cards % every == 0:
            a.log.checkpoints.append(a.snapshot())
            progress({"cards": a.log.cards, "message": f"{a.log.cards} cards reviewed"})
    if not a.log.checkpoints or a.log.checkpoints[-1]["cards"] != a.log.cards:
        a.log.checkpoints.append(a.snapshot())
    a.count_heads()
    return a.log


# --------------------------------------------------------------------------- the benchmark


@dataclass
class ValueOptions:
    """Settings of one review-value benchmark (:func:`run_review_value`).

    Attributes:
        seeds: one stage-1 model per seed (its stage-2 runs, errors and gold draws use it too).
        budget: cards per queue order and action (default 2,000).
        every: a checkpoint every ``every`` cards (default 250).
        points: card counts at which stage 2 is trained (each a multiple of ``every`` up to
            ``budget``); None: every checkpoint.
        orders: queue orders (``db.queries.QUEUE_ORDERS``).
        actions: annotator actions (:data:`ACTIONS`).
        combos: ``"order/action"`` names to run instead of every order with every action (a
            cheaper benchmark: e.g. both actions on one order, one action on the others).
        error_rate / seconds_per_decision / undo_rate: see :class:`ReviewerOptions`.
        preset: training preset of both stages (``fast``: the paper system, utterance means, a
            short schedule).
        stage1_epochs / stage2_epochs: total epochs of each stage (None: the preset's).
        threads: torch CPU threads per run.
    """

    seeds: tuple[int, ...] = (336, 337, 338)
    budget: int = 2000
    every: int = 250
    points: tuple[int, ...] | None = None
    orders: tuple[str, ...] = q.QUEUE_ORDERS
    actions: tuple[str, ...] = ACTIONS
    combos: tuple[str, ...] | None = None
    error_rate: float = 0.05
    seconds_per_decision: float | None = None
    undo_rate: float = 0.01
    preset: str = "fast"
    stage1_epochs: int | None = None
    stage2_epochs: int | None = 4
    threads: int = 1
    device: str = "auto"
    feature_set: str = "builtin"

    def check(self) -> tuple[int, ...]:
        """The stage-2 points; raises InputError naming a bad field."""
        for name in ("budget", "every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be a whole number >= 1, got {v!r}", field=name)
        if not self.seeds:
            raise InputError("give at least one seed", field="seeds")
        for o in self.orders:
            if o not in q.QUEUE_ORDERS:
                raise InputError(
                    f"queue order {o!r} is not one of {', '.join(q.QUEUE_ORDERS)}", field="orders"
                )
        for e in ("stage1_epochs", "stage2_epochs"):
            v = getattr(self, e)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise InputError(f"{e} must be a whole number >= 1, got {v!r}", field=e)
        ReviewerOptions(
            action=self.actions[0] if self.actions else "",
            error_rate=self.error_rate,
            seconds_per_decision=self.seconds_per_decision,
            undo_rate=self.undo_rate,
        ).check()
        for a in self.actions:
            ReviewerOptions(action=a).check()
        self.pairs()
        checkpoints = list(range(self.every, self.budget + 1, self.every))
        if not checkpoints:
            raise InputError(
                f"every ({self.every}) must not exceed the budget ({self.budget})", field="every"
            )
        points = tuple(sorted(set(self.points))) if self.points else tuple(checkpoints)
        bad = [p for p in points if p not in checkpoints]
        if bad:
            raise InputError(
                f"points {bad} are not multiples of every ({self.every}) up to the budget "
                f"({self.budget})",
                field="points",
            )
        return points

    def pairs(self) -> list[tuple[str, str]]:
        """(order, action) pairs to run; raises InputError for a bad ``combos`` name."""
        if not self.combos:
            return [(o, a) for o in self.orders for a in self.actions]
        out = []
        for name in self.combos:
            order, _, action = name.partition("/")
            if order not in q.QUEUE_ORDERS or action not in ACTIONS:
                raise InputError(
                    f"combo {name!r} is not <order>/<action> with an order of "
                    f"{', '.join(q.QUEUE_ORDERS)} and an action of {', '.join(ACTIONS)}",
                    field="combos",
                )
            out.append((order, action))
        return out


@dataclass
class _Data:
    train: Any
    valid: Any
    test: Any
    pool: Any
    pool_ids: list[int]
    dims: dict[str, int]
    schema: Any


def _load(store, project_id: int, feature_set: str) -> _Data:
    from meiju_core.services import training

    parts, dims, schema = training.load_splits(
        store, project_id=project_id, feature_set=feature_set
    )
    for split in ("train", "valid", "test", "pool"):
        if not parts[split].sample_ids:
            raise InputError(f"the benchmark needs {split} samples; the project has none")
    return _Data(
        parts["train"].data,
        parts["valid"].data,
        parts["test"].data,
        parts["pool"].data,
        parts["pool"].sample_ids,
        dims,
        schema,
    )


def _key(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _copy_store(store, dest: Path):
    """A copy of a SQLite store at ``dest``, made once and reused (the rounds and model versions
    the benchmark adds stay out of the project's own database). Raises InputError for another
    database."""
    from db.engine import Store

    url = store.read_engine.url
    if not store.is_sqlite or not url.database or url.database == ":memory:":
        raise InputError(
            "the review benchmark works on a copy of a SQLite store file; this store is "
            f"{url.get_backend_name()}",
            field="database_url",
        )
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_suffix(".part")
        part.unlink(missing_ok=True)
        src, dst = sqlite3.connect(url.database), sqlite3.connect(part)
        with dst:
            src.backup(dst)
        src.close()
        dst.close()
        part.replace(dest)
    return Store.from_url(f"sqlite:///{dest}")


class _Bench:
    """One benchmark: the work store, the data, the runs (cached under ``cache``)."""

    def __init__(self, store, project_id: int, opts: ValueOptions, cache: Path, progress):
        from meiju_core.services.table1 import System, Table1Options, _Runner, _Splits

        self.store, self.pid, self.o = store, project_id, opts
        self.cache, self.progress = cache, progress
        self.d = _load(store, project_id, opts.feature_set)
        self.truth = withheld_labels(store, project_id=project_id)
        self.heads = tuple(self.d.schema.head_names)
        splits = _Splits(
            self.d.train, self.d.valid, self.d.test, self.d.pool, {}, self.d.dims, self.d.schema
        )

        def runner(epochs: int | None) -> _Runner:
            t1 = Table1Options(
                epochs=epochs,
                device=opts.device,
                feature_set=opts.feature_set,
                threads=opts.threads,
            )
            return _Runner(splits, t1, cache)

        self.runner1 = runner(opts.stage1_epochs)
        self.runner2 = runner(opts.stage2_epochs)
        self.system = System("review", opts.preset)
        self.row = {sid: i for i, sid in enumerate(self.d.pool_ids)}
        self.seconds = opts.seconds_per_decision or median_seconds(store, project_id=project_id)
        self.runs = 0
        self._work: Store | None = None

    @property
    def work(self) -> Store:
        """The work store of the current seed (set by :meth:`use_work`)."""
        if self._work is None:
            raise RuntimeError("no work store yet: call _Bench.use_work(store) first")
        return self._work

    def use_work(self, work: Store) -> None:
        """Work in ``work`` (one copy of the store per seed, so seeds may run in parallel
        processes: opening a round closes the project's other rounds)."""
        from meiju_core.services import users

        self._work = work
        admin = users.add_user(work, name="simulated-admin", role="admin")
        self.admin = {"id": admin, "name": "simulated-admin", "role": "admin"}
        self.annotator = simulated_user(work)

    def dispose_work(self) -> None:
        """Close the work store's connections, if there is one."""
        if self._work is not None:
            self._work.dispose()

    # -- stage 1 and its model version in the work store ------------------------------------

    def stage1(self, seed: int) -> dict:
        run = self.runner1.run(self.system, 1, seed, self.d.train)
        return run

    def model_version(self, seed: int, run: dict) -> int:
        """The stage-1 model's pool predictions as a model version of the work store
        (probabilities temperature-scaled on valid, as ``training.predict`` stores them)."""
        from meiju_core.ml.pseudo import apply_temperature, temperature_scale
        from meiju_core.services import training

        name = f"review-value-{seed}-{Path(run['checkpoint']).parent.name}"
        with self.work.read() as s:
            mv = s.scalars(select(ModelVersion).where(ModelVersion.name == name)).first()
            if mv is not None:
                return mv.id
        temperatures, scaled = {}, {}
        for h in self.heads:
            y = self.d.valid.labels[h]
            known = y >= 0
            pv = run["probs"]["valid"][h].astype(np.float64)
            pv = pv / pv.sum(1, keepdims=True)
            t = float(temperature_scale(pv[known], y[known], kind="probs"))
            temperatures[h] = t
            pp = run["probs"]["pool"][h].astype(np.float64)
            scaled[h] = apply_temperature(pp / pp.sum(1, keepdims=True), t, kind="probs")
        fs_id = training.feature_set_id(self.work, self.pid, self.o.feature_set)
        with self.work.write() as s:
            mv = ModelVersion(
                project_id=self.pid,
                name=name,
                stage=1,
                preset=self.o.preset,
                config={
                    "feature_set_id": fs_id,
                    "schema": self.d.schema.to_dict(),
                    "temperature": temperatures,
                    "benchmark": "review_value",
                },
                checkpoint_path=run["checkpoint"],
                snapshot={},
                metrics={"valid": run["valid"], "test": run["test"]},
            )
            s.add(mv)
            s.flush()
            mv_id = mv.id
        training.write_predictions(self.work, mv_id, self.d.schema, self.d.pool_ids, scaled)
        return mv_id

    # -- label sets ---------------------------------------------------------------------------

    def _open(self, mv_id: int, order: str, explicit: dict | None, budget: int | None) -> int:
        from meiju_core.services import rounds
        from meiju_core.settings import Settings

        settings = Settings.load(data_dir=str(self.cache), database_url="", project="x")
        return rounds.open_round(
            self.work,
            settings,
            project_id=self.pid,
            model_version_id=mv_id,
            thresholds=MIN_THRESHOLD,
            strategy="explicit" if explicit else "balanced",
            budget=budget,
            explicit=explicit,
            user=self.admin,
            queue_order=order,
        )

    def reviewed(self, seed: int, mv_id: int, order: str, action: str) -> dict:
        """The simulated session of one order and action (cached as JSON)."""
        o = self.o
        key = _key(
            "review",
            mv_id,
            order,
            action,
            o.error_rate,
            self.seconds,
            o.undo_rate,
            o.budget,
            o.every,
            seed,
            len(self.truth),
        )
        path = self.cache / f"sim-{seed}-{order}-{action}-{key}.json"
        if path.exists():
            return json.loads(path.read_text())
        # quotas never bind: every class may take the whole budget (the order alone decides)
        explicit = {h: dict.fromkeys(self.d.schema.classes(h), o.budget) for h in self.heads}
        rid = self._open(mv_id, order, explicit, max(sum(v.values()) for v in explicit.values()))
        t0 = time.perf_counter()
        log = simulate_review(
            self.work,
            round_id=rid,
            truth=self.truth,
            options=ReviewerOptions(
                action=action,
                error_rate=o.error_rate,
                seconds_per_decision=self.seconds,
                undo_rate=o.undo_rate,
                seed=seed,
            ),
            budget=o.budget,
            every=o.every,
            user=self.annotator,
        )
        out = {**asdict(log), "round_id": rid, "wall_seconds": time.perf_counter() - t0}
        path.write_text(json.dumps(out))
        return out

    def _auto_round(self, mv_id: int, budget: int) -> tuple[int, dict[str, str]]:
        """One round of the automatic rule with balanced quotas of ``budget`` per head:
        (pool samples taken, their labels)."""
        from meiju_core.services import decisions

        rid = self._open(mv_id, "confidence", None, budget)
        decisions.auto_pseudo_label(self.work, round_id=rid, rule="joint", confidence="raw")
        with self.work.read() as s:
            rows = s.execute(
                select(PseudoLabel.sample_id, PseudoLabel.head, PseudoLabel.label).where(
                    PseudoLabel.round_id == rid, PseudoLabel.state == "accepted"
                )
            ).all()
        return len({sid for sid, _h, _l in rows}), {f"{sid}:{h}": lab for sid, h, lab in rows}

    def automatic(self, seed: int, mv_id: int, count: int) -> dict:
        """The paper's automatic rule (raw confidence, both labels or none, balanced quotas
        fitted to the candidates) taking as many pool samples as ``count`` cards: the per-head
        budget is searched (doubling, then bisection) for the most samples not over ``count``,
        since quotas on both heads let the joint rule take fewer samples than its budget.
        Cached as JSON."""
        path = self.cache / f"auto-{seed}-{_key('auto-samples', mv_id, count, seed)}.json"
        if path.exists():
            return json.loads(path.read_text())
        tried: dict[int, tuple[int, dict[str, str]]] = {}

        def run(budget: int) -> int:
            if budget not in tried:
                tried[budget] = self._auto_round(mv_id, budget)
            return tried[budget][0]

        lo, hi = 0, count
        while run(hi) < count and hi < 16 * count and hi < 2 * len(self.d.pool_ids):
            lo, hi = hi, hi * 2
        if run(hi) > count:
            while hi - lo > max(1, count // 200):
                mid = (lo + hi) // 2
                if run(mid) > count:
                    hi = mid
                else:
                    lo = mid
        fits = [b for b, (n, _) in tried.items() if n <= count]
        budget = max(fits, key=lambda b: (tried[b][0], -b)) if fits else min(tried)
        samples, labels = tried[budget]
        out = {
            "cards": count,
            "samples": samples,
            "budget": budget,
            "seconds": 0.0,
            "labels": labels,
        }
        path.write_text(json.dumps(out))
        return out

    def gold_labelled(self, seed: int, count: int) -> dict:
        """``count`` random pool samples with their withheld labels (a labeller's card costs
        what a correction costs: twice the seconds)."""
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(self.d.pool_ids))[:count]
        labels = {}
        for i in order:
            sid = self.d.pool_ids[int(i)]
            for h, lab in self.truth.get(sid, {}).items():
                if lab is not None:
                    labels[f"{sid}:{h}"] = lab
        return {"cards": count, "seconds": 2.0 * self.seconds * count, "labels": labels}

    # -- stage 2 -------------------------------------------------------------------------------

    def train_set(self, labels: dict[str, str]):
        from meiju_core.ml.train import TrainData

        per_row: dict[int, dict[str, int]] = {}
        for k, lab in labels.items():
            sid, head = k.split(":", 1)
            row = self.row.get(int(sid))
            if row is not None and head in self.heads:
                per_row.setdefault(row, {})[head] = self.d.schema.index(head, lab)
        idx = sorted(per_row)
        chosen = self.d.pool.subset(idx)
        chosen.labels = {
            h: np.array([per_row[i].get(h, -1) for i in idx], dtype=np.int64) for h in self.heads
        }
        train = self.d.train
        return TrainData(
            ids=train.ids + chosen.ids,
            features={
                m: list(train.features[m]) + list(chosen.features.get(m, [None] * len(idx)))
                for m in train.features
            },
            labels={h: np.concatenate([train.labels[h], chosen.labels[h]]) for h in self.heads},
        )

    def precision(self, labels: dict[str, str]) -> float | None:
        """Share of the pseudo-labels equal to the withheld label, over those that have one."""
        known = right = 0
        for k, lab in labels.items():
            sid, head = k.split(":", 1)
            t = self.truth.get(int(sid), {}).get(head)
            if t is not None:
                known += 1
                right += t == lab
        return right / known if known else None

    def stage2(self, seed: int, stage1: dict, labels: dict[str, str]) -> dict:
        run = self.runner2.run(
            self.system, 2, seed, self.train_set(labels), init_from=Path(stage1["checkpoint"])
        )
        self.runs += 0 if run.get("cached") else 1
        return {
            "test": run["test"],
            "valid": run["valid"],
            "n_labels": len(labels),
            "precision": self.precision(labels),
            "seconds": run["seconds"],
            "cached": bool(run.get("cached")),
        }


def run_review_value(
    store,
    *,
    project_id: int,
    data_dir: Path,
    options: ValueOptions = ValueOptions(),
    progress: Progress = _noop,
) -> dict[str, Any]:
    """The review-value benchmark (module docstring) on a copy of ``store``; runs and simulated
    sessions are cached under ``<data_dir>/review_value/<project id>/``, so an interrupted run
    resumes.

    Returns:
        ``{"options", "seconds_per_decision", "points", "seeds": {seed: {"stage1", "gold_only",
        "curves": {name: [{"cards", "hours", "test", "valid", "n_labels", "precision"}]},
        "sessions": {name: counts}}}, "seconds", "new_runs", "scores"}``; ``scores`` is
        :func:`summarise`; curve names are ``<order>/<action>``, ``automatic`` and
        ``gold_labelling``; scores are weighted F1 per head and their joint harmonic mean on
        test (``valid`` beside, for reference).
    Raises:
        InputError: a bad option (named), a project without a pool or labelled splits, a store
            that is not SQLite.
    """
    points = options.check()
    t0 = time.perf_counter()
    cache = Path(data_dir) / "review_value" / f"project{project_id}"
    cache.mkdir(parents=True, exist_ok=True)
    b = _Bench(store, project_id, options, cache, progress)
    if not b.truth:
        raise InputError("no pool sample has a withheld label to simulate review against")
    try:
        if not b.truth:
            raise InputError("no pool sample has a withheld label to simulate review against")
        combos = options.pairs()
        total = len(options.seeds) * (1 + len(points) * (len(combos) + 2) + 1)
        done = 0

        def step(msg: str) -> None:
            nonlocal done
            done += 1
            progress({"progress": done / total, "message": msg})

        seeds: dict[str, Any] = {}
        for seed in options.seeds:
            b.dispose_work()
            b.use_work(_copy_store(store, cache / f"work-{seed}.db"))
            s1 = b.stage1(seed)
            step(f"seed {seed}: stage 1")
            mv_id = b.model_version(seed, s1)
            gold_only = b.stage2(seed, s1, {})
            step(f"seed {seed}: stage 2 on gold alone")
            curves: dict[str, list[dict]] = {}
            sessions: dict[str, dict] = {}
            for order, action in combos:
                name = f"{order}/{action}"
                sim = b.reviewed(seed, mv_id, order, action)
                sessions[name] = {
                    k: sim[k]
                    for k in (
                        "cards",
                        "seconds",
                        "accepted",
                        "corrected",
                        "rejected",
                        "errors",
                        "undos",
                        "quota_refused",
                        "exhausted",
                        "service_calls",
                        "wall_seconds",
                    )
                }
                at = {c["cards"]: c for c in sim["checkpoints"]}
                curves[name] = []
                for p in points:
                    cp = at.get(p)
                    if cp is None:  # the queue ran out first: the last checkpoint stands
                        step(f"seed {seed}: {name} @ {p}: queue empty")
                        continue
                    r = b.stage2(seed, s1, cp["labels"])
                    curves[name].append({"cards": p, "hours": cp["seconds"] / 3600, **r})
                    step(f"seed {seed}: {name} @ {p}: test joint {r['test']['joint']:.4f}")
            for name, make in (
                ("automatic", lambda n, seed=seed, mv=mv_id: b.automatic(seed, mv, n)),
                ("gold_labelling", lambda n, seed=seed: b.gold_labelled(seed, n)),
            ):
                curves[name] = []
                for p in points:
                    lab = make(p)
                    r = b.stage2(seed, s1, lab["labels"])
                    curves[name].append({"cards": p, "hours": lab["seconds"] / 3600, **r})
                    step(f"seed {seed}: {name} @ {p}: test joint {r['test']['joint']:.4f}")
            seeds[str(seed)] = {
                "stage1": {"test": s1["test"], "valid": s1["valid"]},
                "gold_only": {"test": gold_only["test"], "valid": gold_only["valid"]},
                "curves": curves,
                "sessions": sessions,
            }
        result = {
            "options": {**asdict(options), "orders": list(options.orders)},
            "seconds_per_decision": b.seconds,
            "points": list(points),
            "n_pool": len(b.d.pool_ids),
            "n_withheld": len(b.truth),
            "seeds": seeds,
            "seconds": time.perf_counter() - t0,
            "new_runs": b.runs,
        }
        result["scores"] = summarise(result)
        return result
    finally:
        b.dispose_work()


def _mean_std(values: list[float]) -> dict[str, float]:
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Test joint score per curve and point (mean and sample std over seeds, per seed), the
    gain of each reviewed curve over the automatic rule at the same count (``beats``: the mean
    gain is larger than the larger of the two curves' std over seeds), the best reviewed curve
    (highest mean at 1,000 decisions, else at the last point), decisions per joint point gained
    (one point = 0.01 of joint score) over stage 2 on gold alone and over the automatic rule, and
    the pseudo-labels' size and precision against the withheld labels.

    Returns ``{"curves": {name: {point: {"mean", "std", "n", "per_seed"}}}, "gold_only",
    "stage1", "vs_automatic": {name: {point: {"gain", "gain_std", "spread", "beats"}}}, "best":
    {"at", "curve"}, "decisions_per_point": {name: {point: float | None}},
    "decisions_per_point_vs_automatic": {...}, "labels": {name: {point: {"n", "precision"}}}}``
    (None where nothing was gained).
    """
    seeds = result["seeds"]
    names = sorted({n for s in seeds.values() for n in s["curves"]})
    curves: dict[str, dict[str, Any]] = {}
    for name in names:
        curves[name] = {}
        for p in result["points"]:
            vals = {
                seed: c["test"]["joint"]
                for seed, s in seeds.items()
                for c in s["curves"].get(name, [])
                if c["cards"] == p
            }
            if vals:
                curves[name][str(p)] = {**_mean_std(list(vals.values())), "per_seed": vals}
    gold_only = _mean_std([s["gold_only"]["test"]["joint"] for s in seeds.values()])
    stage1 = _mean_std([s["stage1"]["test"]["joint"] for s in seeds.values()])
    vs_auto: dict[str, dict[str, Any]] = {}
    for name in names:
        if name in ("automatic", "gold_labelling"):
            continue
        vs_auto[name] = {}
        for p, cell in curves[name].items():
            auto = curves.get("automatic", {}).get(p)
            if not auto:
                continue
            diffs = [
                cell["per_seed"][s] - auto["per_seed"][s]
                for s in cell["per_seed"]
                if s in auto["per_seed"]
            ]
            spread = max(cell["std"], auto["std"])
            gain = float(np.mean(diffs))
            vs_auto[name][p] = {
                "gain": gain,
                "gain_std": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else 0.0,
                "spread": spread,
                "beats": gain > spread,
            }
    reviewed = [n for n in names if n not in ("automatic", "gold_labelling")]
    ref = "1000" if any("1000" in curves[n] for n in reviewed) else str(result["points"][-1])
    best = max(
        (n for n in reviewed if ref in curves[n]),
        key=lambda n: curves[n][ref]["mean"],
        default=None,
    )
    per_point: dict[str, dict[str, float | None]] = {}
    labels: dict[str, dict[str, dict[str, float | None]]] = {}
    for name in names:
        per_point[name], labels[name] = {}, {}
        for p, cell in curves[name].items():
            gain = (cell["mean"] - gold_only["mean"]) * 100  # joint points (x 100)
            per_point[name][p] = int(p) / gain if gain > 0 else None
            runs = [
                c for s in seeds.values() for c in s["curves"].get(name, []) if str(c["cards"]) == p
            ]
            prec = [c["precision"] for c in runs if c.get("precision") is not None]
            labels[name][p] = {
                "n": float(np.mean([c["n_labels"] for c in runs])),
                "precision": float(np.mean(prec)) if prec else None,
            }
    per_point_auto = {
        name: {p: int(p) / (v["gain"] * 100) if v["gain"] > 0 else None for p, v in per.items()}
        for name, per in vs_auto.items()
    }
    return {
        "curves": curves,
        "gold_only": gold_only,
        "stage1": stage1,
        "vs_automatic": vs_auto,
        "best": {"at": int(ref), "curve": best},
        "decisions_per_point": per_point,
        "decisions_per_point_vs_automatic": per_point_auto,
        "labels": labels,
    }


def _curve_rows(
    points: list[str],
    per_curve: dict[str, dict[str, Any]],
    cell: Callable[[str, str, Any], str],
) -> list[str]:
    """A markdown table of :func:`table`: one row per curve, one column per point;
    ``cell(curve, point, value)`` writes a point's value, "—" where the curve has none."""
    lines = [
        "| curve | " + " | ".join(f"{p} decisions" for p in points) + " |",
        "|" + " --- |" * (len(points) + 1),
    ]
    for name, per in per_curve.items():
        cells = ["—" if per.get(p) is None else cell(name, p, per[p]) for p in points]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def table(result: dict[str, Any]) -> str:
    """A markdown table of the test joint score: one row per curve, one column per point (mean
    ± std over seeds), then the per-seed values."""
    summ = result["scores"]
    points = [str(p) for p in result["points"]]
    lines = _curve_rows(
        points, summ["curves"], lambda _name, _p, v: f"{v['mean']:.4f} ± {v['std']:.4f}"
    )
    g, s1 = summ["gold_only"], summ["stage1"]
    lines.append(
        f"| stage 2 on gold alone | {g['mean']:.4f} ± {g['std']:.4f} (any x) |"
        + " |" * (len(points) - 1)
    )
    lines.append(
        f"| stage 1 (no stage 2) | {s1['mean']:.4f} ± {s1['std']:.4f} |" + " |" * (len(points) - 1)
    )
    lines.append("")
    lines.append("Per seed (test joint):")
    lines.append("")
    seeds = list(result["seeds"])
    lines.append("| curve | decisions | " + " | ".join(f"seed {s}" for s in seeds) + " |")
    lines.append("|" + " --- |" * (len(seeds) + 2))
    for name, cells in summ["curves"].items():
        for p in points:
            if p in cells:
                vals = [cells[p]["per_seed"].get(s) for s in seeds]
                txt = " | ".join(f"{v:.4f}" if v is not None else "—" for v in vals)
                lines.append(f"| {name} | {p} | {txt} |")
    lines.append("")
    lines.append(
        "Reviewed minus automatic rule at the same count (mean over seeds; * when larger than "
        "the spread), and decisions per joint point gained over the automatic rule:"
    )
    lines.append("")

    def gain(name: str, p: str, v: dict[str, Any]) -> str:
        dpp = summ["decisions_per_point_vs_automatic"][name].get(p)
        star = "*" if v["beats"] else ""
        return f"{v['gain']:+.4f}{star} (spread {v['spread']:.4f}; " + (
            f"{dpp:.0f} per point)" if dpp else "no gain)"
        )

    def taken(_name: str, _p: str, v: dict[str, Any]) -> str:
        prec = "—" if v["precision"] is None else f"{v['precision']:.3f}"
        return f"{v['n']:.0f} ({prec})"

    lines += _curve_rows(points, summ["vs_automatic"], gain)
    lines.append("")
    lines.append("Pseudo-labels taken (mean count; precision against the withheld labels):")
    lines.append("")
    lines += _curve_rows(points, summ["labels"], taken)
    best = summ["best"]
    lines.append("")
    lines.append(f"Best reviewed curve at {best['at']} decisions: {best['curve']}")
    return "\n".join(lines)


def figure(result: dict[str, Any]):
    """Plotly figure: mean test joint score (± std over seeds) against decisions (left) and
    annotator-hours (right); stage 2 on gold alone as a dashed line; the automatic rule has no
    annotator-hours and appears on the left only."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    summ = result["scores"]
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("test joint score vs decisions", "test joint score vs annotator-hours"),
        shared_yaxes=True,
    )
    seeds = result["seeds"]
    for name, cells in summ["curves"].items():
        pts = sorted(cells, key=int)
        xs = [int(p) for p in pts]
        ys = [cells[p]["mean"] for p in pts]
        err = [cells[p]["std"] for p in pts]
        dash = "dot" if name in ("automatic", "gold_labelling") else None
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                error_y={"type": "data", "array": err},
                mode="lines+markers",
                name=name,
                legendgroup=name,
                line={"dash": dash},
            ),
            row=1,
            col=1,
        )
        if name == "automatic":
            continue
        hours = []
        for p in pts:
            hs = [
                c["hours"]
                for s in seeds.values()
                for c in s["curves"].get(name, [])
                if c["cards"] == int(p)
            ]
            hours.append(float(np.mean(hs)))
        fig.add_trace(
            go.Scatter(
                x=hours,
                y=ys,
                mode="lines+markers",
                name=name,
                legendgroup=name,
                showlegend=False,
                line={"dash": dash},
            ),
            row=1,
            col=2,
        )
    g = summ["gold_only"]["mean"]
    for col in (1, 2):
        fig.add_hline(
            y=g,
            line_dash="dash",
            annotation_text="stage 2 on gold alone" if col == 1 else None,
            row=1,
            col=col,
        )
    fig.update_xaxes(title_text="decisions (cards)", row=1, col=1)
    fig.update_xaxes(title_text="annotator-hours", row=1, col=2)
    fig.update_yaxes(title_text="test joint score", row=1, col=1)
    fig.update_layout(title="What review buys: stage 2 after N decisions (mean ± std over seeds)")
    return fig
