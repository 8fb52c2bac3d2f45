"""Review: one card at a time, one key per decision, the next card already chosen.

The round panel (and, for admins, the form that opens a new round), the filters and bulk accept
run with the page; the card runs in an ``st.fragment``, so a decision reruns only the card. Each
button calls ``decisions.decide`` / ``decisions.undo`` in its ``on_click`` callback (the decision and
its quota check commit in that call, before the card re-renders), then the fragment reruns once
and shows the next card.

Keeping the rerun short: the page keeps the ids of the next few cards (``rv_ahead``), and each
rerun re-checks only those ids against the queue (an indexed lookup), loads one card, the quota
counts and the history in one read session, and leases the card in one short write. The queue
query (per-head index scans) and the queue count run only when the ids run out; the count's
expensive part (cards matching the filter, whatever their state) is cached per filter.

Filters live in the URL (``?head=intent&label=questioning&min=0.6&unseen=1&disagree=1&model=3``,
and ``samples=1,2,3`` from a link of another page), so a link opens the same queue; the page
reads them on load and writes them back when a filter changes. The filter logic (parsing the
URL, the widgets' state, the queue filter, the summary) is ``pages/_review_filter.py``; the store
reads are ``db.views`` and ``db.queries``, the writes ``meiju_core.services``.

Keys (native ``st.button(shortcut=...)``, which never fire while typing in a text box): A accept
both, E / I accept one head, X reject, S skip, U undo, 1-8 override the predicted class of the
head shown (H switches the head, 0 clears), then A / E / I accept with the override.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

import pandas as pd
import streamlit as st

from db import analytics as an
from db import queries as q
from db import thresholds as thr
from db import views
from meiju_core.errors import BelowThreshold, CardTaken, MeijuError, QuotaExceeded
from meiju_core.services import decisions
from meiju_core.services import rounds as rounds_service
from meiju_core.validate import db_id, db_ids
from pages import _common as common
from pages import _review_filter as rf
from pages._inspect import inspect_panel
from pages._keys import key_listener, new_events

PREFETCH = 8  # card ids fetched ahead in one queue query
# The queue count is recounted with the queue at most this often; in between, this page's own
# decisions and undos adjust it (another annotator's show at the next recount).
COUNT_EVERY_S = 15.0
THRESHOLD_STEPS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
DIGITS = "123456789"
# A E I X S U H and the digits are the page's; C and R are Streamlit's own
RESERVED_KEYS = {"A", "X", "S", "U", "H", "C", "R", "0", *DIGITS}
TRANSCRIPTS_PAGE = "pages/transcripts.py"
# A round's queue order (db.queries.QUEUE_ORDERS), as the round panel and the form name it
QUEUE_ORDER_LABELS = {
    "confidence": "most confident first",
    "uncertainty": "least confident first",
    "disagreement": "disagreements first",
    "rarest": "rarest class first",
}
QUEUE_ORDER_HELP = (
    "The order cards come in. Most confident first is the paper's rule. Least confident first "
    "shows the cards the model is least sure of (within the thresholds). Disagreements first "
    "shows cards whose emotion and intent form a pair never seen in the gold labels (or whose "
    "ensemble members disagree). Rarest class first takes one card of each predicted class in "
    "turn, the class with the fewest gold and accepted labels first. "
    "benchmarks/bench_review_value.py measures which order buys the most joint score per hour."
)
S = st.session_state


# --------------------------------------------------------------------------- state


def _reset_cards() -> None:
    """Forget the card ids kept for the queue (after a new round or a filter change)."""
    for key in (
        "rv_card",
        "rv_ahead",
        "rv_left",
        "rv_focus",
        "rv_leased",
        "rv_shown",
        "rv_bulk",
        "rv_open_heads",
        "rv_confirm",
    ):
        S.pop(key, None)


def _head_keys(heads: list[str]) -> dict[str, str]:
    """A shortcut key per head for "accept this head only": E / I for MEIJU, else a free letter."""
    preferred = {"emotion": "E", "intent": "I"}
    used, out = set(RESERVED_KEYS), {}
    for head in heads:
        for key in [preferred.get(head, "")] + [c.upper() for c in head if c.isalpha()]:
            if key and key not in used:
                out[head] = key
                used.add(key)
                break
    return out


# --------------------------------------------------------------------------- round panel


@st.cache_data(ttl=120, show_spinner=False)
def _candidate_counts(url: str, model_version_id: int) -> dict[str, dict[float, int]]:
    return rounds_service.candidate_counts(
        common.store_at(url), model_version_id=model_version_id, thresholds=list(THRESHOLD_STEPS)
    )


def _default_threshold(counts: dict[float, int]) -> float:
    """The highest step that still yields 200 candidates (the paper's 0.99 when it does)."""
    for t in sorted(THRESHOLD_STEPS, reverse=True):
        if counts.get(t, 0) >= 200:
            return t
    return THRESHOLD_STEPS[0]


@st.cache_data(ttl=60, show_spinner=False)
def _round_plan(
    url: str,
    project_id: int,
    model_version_id: int,
    thresholds_json: str,
    strategy: str,
    budget: int,
) -> dict[str, Any] | None:
    try:
        return rounds_service.round_plan(
            common.store_at(url),
            common.settings(),
            project_id=project_id,
            model_version_id=model_version_id,
            thresholds=json.loads(thresholds_json),
            strategy=strategy,
            budget=budget,
        )
    except MeijuError:
        return None


@st.cache_data(ttl=60, show_spinner=False)
def _evidence_thresholds(url: str, project_id: int) -> dict[str, Any] | None:
    """Per-class thresholds from the review decisions of the project's newest pseudo-label round
    that has any (``rounds_service.thresholds_from_evidence``, default precision), or None."""
    from db.evidence import review_observations

    store = common.store_at(url)
    with store.read() as s:
        rounds = [r["id"] for r in an.rounds(s, project_id=project_id, kind="pseudo")[:5]]
        chosen = next((r for r in rounds if review_observations(s, round_id=r)), None)
    if chosen is None:
        return None
    try:
        return rounds_service.thresholds_from_evidence(store, round_id=chosen)
    except MeijuError:
        return None


def _plan_table(plan: dict[str, Any]) -> None:
    """The queue each class will get in the round about to open, per head."""
    st.markdown("**The queue this round will offer**, per class")
    cols = st.columns(len(plan["classes"]))
    for col, (head, rows) in zip(cols, plan["classes"].items(), strict=False):
        total = sum(r["queue"] for r in rows)
        col.markdown(f"{head.capitalize()}: **{total}** cards")
        col.dataframe(
            pd.DataFrame(rows).set_index("class")[
                ["gold", "threshold", "candidates", "quota", "queue"]
            ],
            width="stretch",
            key=f"rv_plan_{head}",
        )
    st.caption(
        "threshold: the confidence a prediction of the class needs; "
        "candidates: pool samples predicted as the class at or above it; quota: most "
        "pseudo-labels the round accepts for it (the gold distribution fitted to the "
        "candidates); queue: the cards the class brings to Review."
    )


def round_summary(rnd: dict[str, Any] | None) -> None:
    if rnd is None:
        st.info("No review round is open.")
        return
    th = " · ".join(f"{h} {thr.describe(t)}" for h, t in rnd["thresholds"].items())
    budget = {h: sum(int(v) for v in per.values()) for h, per in rnd["quotas"].items()}
    quota = " · ".join(f"{h} {n}" for h, n in budget.items())
    order = rnd.get("queue_order") or "confidence"
    st.caption(
        f"Round **#{rnd['id']}** · model **{rnd['model_name']}** (#{rnd['model_version_id']}) · "
        f"queue order **{QUEUE_ORDER_LABELS.get(order, order)}** · "
        f"thresholds {th} · quota totals {quota} · opened {common.ago(rnd['created_at'])}"
    )


def open_round_ui(store, settings, project: dict[str, Any], user: dict[str, Any], has_round: bool):
    """Admins: pick a model version, thresholds per head, a quota strategy and the queue order;
    open the round."""
    with st.expander("Open a new round", expanded=not has_round, icon=":material/add_circle:"):
        versions = common.model_versions(store, project_id=project["id"])
        if not versions:
            st.info("No model version yet: train one on the Training page first.")
            return
        mv_id = _model_version_choice(versions)
        counts = _candidate_counts(settings.database_url, mv_id)
        heads = list(project["heads"])
        _candidate_table(counts, heads)
        cols = st.columns(len(heads) + 2)
        thresholds = _threshold_inputs(settings, project, mv_id, counts, heads, cols)
        strategy, budget = _quota_inputs(settings, cols[-2], cols[-1])
        order = st.radio(
            "Queue order",
            list(QUEUE_ORDER_LABELS),
            format_func=QUEUE_ORDER_LABELS.get,
            horizontal=True,
            key="rv_new_order",
            help=QUEUE_ORDER_HELP,
        )
        plan = _round_plan(
            settings.database_url,
            project["id"],
            mv_id,
            json.dumps(thresholds, sort_keys=True),
            strategy,
            budget,
        )
        if plan is not None:
            _plan_table(plan)
        if st.button("Open round", type="primary", key="rv_open_round"):
            params = {"thresholds": thresholds, "strategy": strategy, "budget": budget}
            _open_round(store, settings, project, user, mv_id, params, order)


def _model_version_choice(versions: list[dict[str, Any]]) -> int:
    """The model version select box (the promoted one first chosen); returns its id."""
    ids = [v["id"] for v in versions]
    names = {v["id"]: f"#{v['id']} {v['name']} ({v['status']})" for v in versions}
    promoted = next((v["id"] for v in versions if v["status"] == "promoted"), ids[0])
    return st.selectbox(
        "Model version",
        ids,
        index=ids.index(promoted),
        format_func=names.get,
        key="rv_new_mv",
    )


def _candidate_table(counts: dict[str, dict[float, int]], heads: list[str]) -> None:
    """Per head, the pool samples whose confidence reaches each of :data:`THRESHOLD_STEPS`."""
    table = pd.DataFrame(
        [[counts.get(h, {}).get(t, 0) for t in THRESHOLD_STEPS] for h in heads],
        index=heads,
        columns=[f"≥ {t:g}" for t in THRESHOLD_STEPS],
    )
    st.dataframe(table, width="stretch")
    st.caption(
        "Pool samples whose confidence reaches each threshold, per head. A model trained on "
        "few labels rarely reaches the paper's 0.99: pick a threshold that leaves enough cards."
    )


def _threshold_inputs(
    settings, project: dict[str, Any], mv_id: int, counts, heads: list[str], cols
) -> dict[str, Any]:
    """{head: threshold}: a number input per head (its default leaves enough cards), or, with
    the toggle on, the per-class thresholds from the last round's review evidence."""
    evidence = _evidence_thresholds(settings.database_url, project["id"])
    from_review = False
    if evidence is not None:
        from_review = st.toggle(
            f"Per-class thresholds from the review decisions of round #{evidence['round_id']}",
            key="rv_new_from_review",
            help="Per head and predicted class, the lowest confidence at which reviewers "
            f"accepted at least {evidence['precision']:.0%} of the pseudo-labels (over at "
            f"least {evidence['min_count']} decisions); classes with fewer decisions keep "
            "that round's threshold. The Dashboard's Evidence tab shows the evidence.",
        )
    thresholds: dict[str, Any] = {}
    for col, head in zip(cols, heads, strict=False):
        if from_review and evidence is not None:
            thresholds[head] = dict(evidence["thresholds"][head])
            col.markdown(f"**{head.capitalize()}** {thr.describe(thresholds[head])}")
            continue
        thresholds[head] = col.number_input(
            f"{head.capitalize()} threshold",
            min_value=0.0,
            max_value=1.0,
            value=_default_threshold(counts.get(head, {})),
            step=0.01,
            format="%.2f",
            key=f"rv_new_th_{mv_id}_{head}",
        )
    return thresholds


def _quota_inputs(settings, strategy_col, budget_col) -> tuple[str, int]:
    """(quota strategy, budget per head) from their widgets, defaulting to the settings."""
    strategy = strategy_col.radio(
        "Quota strategy",
        ["balanced", "proportional"],
        index=0 if settings.quota_strategy != "proportional" else 1,
        horizontal=True,
        key="rv_new_strategy",
        help="balanced: the same quota for every class (budget / classes); proportional: "
        "quotas follow the gold train distribution.",
    )
    budget = budget_col.number_input(
        "Budget per head",
        min_value=1,
        value=int(settings.quota_budget),
        step=100,
        key="rv_new_budget",
        help="Most pseudo-labels the round may accept per head.",
    )
    return strategy, int(budget)


def _open_round(
    store, settings, project, user, mv_id: int, params: dict[str, Any], order: str
) -> None:
    """Open the round (the service checks the role and the thresholds); an error shows on the
    form, success is flashed on the next run."""
    try:
        rid = rounds_service.open_round(
            store,
            settings,
            project_id=project["id"],
            model_version_id=mv_id,
            user=user,
            queue_order=order,
            **params,
        )
    except MeijuError as e:
        st.error(str(e))
        return
    _reset_cards()
    common.flash(
        "success",
        f"Round #{rid} is open. Cards come {QUEUE_ORDER_LABELS[order]}.",
        key="rv_page_flash",
    )
    st.rerun()


# --------------------------------------------------------------------------- filters


@st.cache_data(ttl=300, show_spinner=False)
def _unseen_pairs(url: str, project_id: int, heads: tuple[str, str]) -> tuple:
    with common.store_at(url).read() as s:
        return q.unseen_pairs(s, project_id=project_id, heads=heads)


@st.cache_data(ttl=60, show_spinner=False)
def _predicted_versions(url: str, project_id: int) -> dict[int, str]:
    """{model version id: label} of the project's versions that have predictions, newest first."""
    with common.store_at(url).read() as s:
        rows = views.predicted_versions(s, project_id=project_id)
    return {i: f"#{i} {name} ({status})" for i, name, status in rows}


@st.cache_data(ttl=600, show_spinner=False, hash_funcs={q.QueueFilter: repr})
def _candidate_count(
    url: str, round_id: int, flt: q.QueueFilter, open_key: tuple[tuple[str, tuple[str, ...]], ...]
) -> int:
    """Cards matching the filter whatever their state: the costly part of the queue count, which
    changes only with the round, the filter, the predictions or the classes whose quota is full
    (``open_key``, sorted items of ``q.open_classes``; see ``q.queue_size(base=...)``)."""
    with common.store_at(url).read() as s:
        return q.candidate_count(s, round_id=round_id, flt=flt, open_labels=dict(open_key))


@st.cache_data(ttl=60, show_spinner=False)
def _outside_pool(url: str, sample_ids: tuple[int, ...]) -> tuple[int, ...]:
    """The linked samples that are not in the pool (valid, test or train), in link order."""
    with common.store_at(url).read() as s:
        return views.outside_pool(s, sample_ids=sample_ids)


def inspect_link(project: dict[str, Any]) -> bool:
    """A link naming gold-labelled samples (a dashboard confusion cell) opens the inspect view
    (``pages/_inspect.py``) instead of the queue; returns whether it did."""
    raw = st.query_params.get("samples", "")
    ids = db_ids(raw)
    if not ids:
        return False
    url = common.settings().database_url
    outside = _outside_pool(url, ids)
    if not outside:
        return False
    versions = _predicted_versions(url, project["id"])
    model = st.query_params.get("model", "")
    mv_id = db_id(model) if db_id(model) in versions else max(versions, default=0)
    params = {k: st.query_params.get(k, "") for k in ("head", "gold", "pred", "split")}
    inspect_panel(project, list(outside), mv_id, params)
    return True


def _url_params() -> dict[str, str]:
    """The filter parameters in the page's URL, unchecked."""
    return rf.url_params(st.query_params)


def _to_widgets(params: dict[str, str], heads: dict[str, list[str]], round_mv: int) -> None:
    """Set the filter widgets' state from filter parameters."""
    for key, value in rf.widget_state(params, heads, round_mv).items():
        S[key] = value


def _write_url(params: dict[str, str]) -> None:
    gone, changed = rf.url_update(_url_params(), params)
    for key in gone:
        del st.query_params[key]
    if changed:
        st.query_params.update(changed)


def _clear_filters() -> None:
    S["rv_clear"] = True


def sync_filters(heads: dict[str, list[str]], versions: dict[int, str], round_mv: int) -> None:
    """Before the filter widgets: a changed URL (a link was opened, or the address edited) sets
    them; coming back from another page without parameters restores the last filters."""
    url = _url_params()
    if S.pop("rv_clear", False):
        S["rv_params"] = {}
        _to_widgets({}, heads, round_mv)
    elif url != S.get("rv_url_seen"):
        if url or "rv_params" not in S:
            S["rv_params"] = rf.clean_params(url, heads, versions)
        _to_widgets(S["rv_params"], heads, round_mv)
    elif "rv_f_head" not in S:  # widget state is dropped while another page is shown
        _to_widgets(S.get("rv_params", {}), heads, round_mv)
    if S.get("rv_f_model") not in versions:
        S["rv_f_model"] = round_mv


def queue_filter_ui(
    project: dict[str, Any], rnd: dict[str, Any], versions: dict[int, str]
) -> q.QueueFilter:
    """Filters (head, predicted class, confidence range, model version, unseen emotion x intent
    pair, path disagreement), kept in the URL; returns the queue filter."""
    heads, url = project["heads"], common.settings().database_url
    round_mv = rnd["model_version_id"]
    if round_mv not in versions:
        versions = {round_mv: f"#{round_mv} {rnd['model_name']}", **versions}
    sync_filters(heads, versions, round_mv)
    pair_heads = rf.pair_heads(heads)
    pairs = _unseen_pairs(url, project["id"], pair_heads) if pair_heads else ()
    # a constant label: a popover whose label changes is a new element, and would close
    with st.popover("Filter", icon=":material/filter_list:"):
        head = st.selectbox("Head", ["any", *heads], key="rv_f_head")
        if head != "any":
            st.selectbox("Predicted class", ["any", *heads[head]], key=f"rv_f_label_{head}")
        st.slider("Confidence", 0.0, 1.0, step=0.01, key="rv_f_conf")
        st.selectbox(
            "Model version",
            list(versions),
            format_func=lambda i: (
                versions[i].replace(")", ", round's)") if i == round_mv else versions[i]
            ),
            key="rv_f_model",
            help="Whose predictions rank and label the cards; any version with predictions. "
            "An accept records the class shown.",
        )
        if pair_heads:
            a, b = pair_heads
            n_cells = len(heads[a]) * len(heads[b])
            st.toggle(
                f"Unseen {a} × {b} pair",
                key="rv_f_unseen",
                help=f"Cards whose predicted ({a}, {b}) pair never occurs together in the gold "
                f"train labels: {len(pairs)} of {n_cells} cells of the co-occurrence are zero.",
            )
        st.toggle(
            "Members disagree",
            key="rv_f_disagree",
            help="Cards whose ensemble members predict different classes for a head (reviewing "
            "against an ensemble version, e.g. intent from a one-head and a two-head system).",
        )
        st.button("Clear filters", key="rv_f_clear", on_click=_clear_filters, type="tertiary")
    params = rf.params_from_widgets(S, heads, round_mv)
    S["rv_params"] = S["rv_url_seen"] = params
    _write_url(params)
    flt = rf.queue_filter(params, pairs=tuple(pairs), pair_heads=pair_heads)
    if S.get("rv_filter") != flt:
        S["rv_filter"] = flt
        _reset_cards()
    return flt


def filter_summary(flt: q.QueueFilter, params: dict[str, str]) -> None:
    """The active filters in words and the link that opens this queue (a link naming samples
    outside the pool opens the inspect view instead, see :func:`inspect_link`)."""
    text = rf.summary_text(flt, params)
    if text:
        st.caption(text)


# --------------------------------------------------------------------------- the card


def _load_view(store, round_id: int, user_id: int, flt: q.QueueFilter) -> dict[str, Any]:
    """The card to show and what is drawn around it, in one read session (the history is read
    after the card is drawn, see :func:`card_panel`)."""
    kept = [S.get("rv_focus"), S.get("rv_card"), *S.get("rv_ahead", [])]
    prepared = S.pop("rv_prepared", None)
    candidates = list(dict.fromkeys(i for i in kept if i is not None))
    with store.read() as s:
        quotas = q.quota_status(s, round_id=round_id)
        open_labels = q.open_from_status(quotas)
        ids: list[int] = []
        if candidates:
            still = set(
                q.queue(
                    s,
                    round_id=round_id,
                    flt=replace(flt, sample_ids=tuple(candidates)),
                    user_id=user_id,
                    limit=len(candidates),
                    open_labels=open_labels,
                )
            )
            ids = [i for i in candidates if i in still]
        if len(ids) < 2:
            ids += q.queue(
                s,
                round_id=round_id,
                flt=flt,
                user_id=user_id,
                limit=PREFETCH,
                exclude=ids,
                open_labels=open_labels,
            )
            if "rv_left" not in S or time.monotonic() - S.get("rv_left_at", 0) > COUNT_EVERY_S:
                # queue_size leaves out leased cards; the one on this screen still counts here
                held = S.get("rv_leased")
                mine = 1 if held and held[0] in ids else 0
                open_key = tuple(sorted(open_labels.items()))
                base = _candidate_count(common.settings().database_url, round_id, flt, open_key)
                S["rv_left"] = (
                    q.queue_size(s, round_id=round_id, flt=flt, base=base, open_labels=open_labels)
                    + mine
                )
                S["rv_left_at"] = time.monotonic()
        rnd = views.review_round(s, round_id=round_id)
        assert rnd is not None, f"no review round {round_id}"
        mv_id = flt.model_version_id or rnd["model_version_id"]
        if prepared and ids and prepared["sid"] == ids[0] and prepared["model"] == mv_id:
            cards, states = [prepared["card"]], prepared["states"]  # read by _advance this run
        else:
            cards = q.load_cards(s, model_version_id=mv_id, sample_ids=ids[:1])
            states = views.head_states(s, round_id=round_id, sample_id=ids[0]) if cards else {}
        return {
            "ids": ids,
            "card": cards[0] if cards else None,
            "states": states,
            "thresholds": rnd["thresholds"],
            "model_version_id": mv_id,
            "round_model": rnd["model_version_id"],
            "quotas": quotas,
        }


def _read_history(store, round_id: int, user_id: int) -> list[dict[str, Any]]:
    with store.read() as s:
        return q.history(s, round_id=round_id, user_id=user_id, limit=10)


def _lease(store, settings, round_id: int, user_id: int, sample_id: int) -> bool:
    return common.held_lease(
        "rv_leased",
        sample_id,
        settings.lease_seconds,
        lambda: decisions.lease(
            store,
            round_id=round_id,
            sample_id=sample_id,
            user_id=user_id,
            seconds=settings.lease_seconds,
        ),
    )


# --------------------------------------------------------------------------- overrides


def _overrides(sample_id: int) -> dict[str, str]:
    """head -> class set by the digit keys for this card (empty for another card)."""
    o = S.get("rv_override")
    return dict(o["labels"]) if o and o["sample"] == sample_id else {}


def _set_override(sample_id: int, head: str, label: str) -> None:
    """Digit key callback: set ``head``'s class on this card; the same key again, or the
    predicted class, clears it."""
    labels = _overrides(sample_id)
    predicted = (S.get("rv_card_labels") or {}).get(head)
    if labels.get(head) == label or label == predicted:
        labels.pop(head, None)
    else:
        labels[head] = label
    S["rv_override"] = {"sample": sample_id, "labels": labels}


def _clear_override(sample_id: int) -> None:
    S["rv_override"] = {"sample": sample_id, "labels": {}}


def _next_digit_head(heads: list[str]) -> None:
    """H: the digits override the next head."""
    now = S.get("rv_digit_head", heads[0])
    S["rv_digit_head"] = heads[(heads.index(now) + 1) % len(heads)] if now in heads else heads[0]


# --------------------------------------------------------------------------- decisions


def _card_done(sample_id: int) -> None:
    """Forget a card this session finished (decided, skipped, or taken by someone else)."""
    decided = S.setdefault("rv_decided", [])
    decided.append(sample_id)
    del decided[:-50]
    S["rv_ahead"] = [i for i in S.get("rv_ahead", []) if i != sample_id]
    if S.get("rv_card") == sample_id:
        S.pop("rv_card", None)
    if S.get("rv_focus") == sample_id:
        S.pop("rv_focus", None)
    S.pop("rv_override", None)
    S.pop("rv_confirm", None)
    S.pop("rv_open_heads", None)


def _decide(action: str, sample_id: int, heads: list[str] | None = None) -> bool:
    """Commit one decision on the card ``sample_id`` (button callback; keys come through
    :func:`_on_keys`): accepting with the digit overrides and with the classes shown when
    another model's predictions are shown. ``heads`` None means the card's heads still open.

    The card stays while a head is left to review (E, then I); a skip sends it to the end of
    the queue. An accept of a head under the round's threshold asks for a second press first.
    A card decided or held by someone else since it was shown gives way to the next card, with
    a message. Returns whether a decision was recorded."""
    if sample_id in S.get("rv_decided", []):  # a click that reached a card already done
        return False
    ms = int((time.monotonic() - S.get("rv_shown", time.monotonic())) * 1000)
    labels: dict[str, str] | None = None
    mv_id = S.get("rv_card_model")
    if action == "accept":
        shown = dict(S.get("rv_card_labels") or {}) if mv_id else {}
        labels = {**shown, **_overrides(sample_id)} or None
    asked = (sample_id, action, tuple(heads or ()))
    confirmed = S.get("rv_confirm") == asked
    try:
        decisions.decide(
            common.store(),
            round_id=S["rv_round"],
            sample_id=sample_id,
            action=action,
            user=common.user(),
            heads=heads,
            labels=labels,
            ms_spent=ms,
            model_version_id=mv_id,
            confirm_below_threshold=confirmed,
        )
    except BelowThreshold as e:
        S["rv_confirm"] = asked
        again = (
            "A"
            if not heads
            else _head_keys(list(S.get("rv_heads", [])) or heads).get(heads[0], "the same key")
        )
        common.flash(
            "warning",
            f"**{e.head.capitalize()} {e.label}** has confidence {e.confidence:.2f}, below the "
            f"round's threshold {e.threshold:.2f}. Press **{again}** again to accept it anyway "
            "(recorded as a below-threshold accept), or set another class with the digits, "
            "accept the other head only, or reject.",
            key="rv_flash",
        )
        return False
    except QuotaExceeded as e:
        common.flash(
            "warning",
            f"Quota full for **{e.head} · {e.label}**: {e.accepted} of {e.quota} accepted. "
            "Override the class, accept the other head only, reject or skip.",
            key="rv_flash",
        )
        return False
    except CardTaken as e:
        common.flash(
            "warning",
            f"Not recorded: {e} since this card was shown. Here is the next card.",
            key="rv_flash",
        )
        _card_done(sample_id)
        return False
    except MeijuError as e:
        common.flash("error", str(e), key="rv_flash")
        return False
    S.pop("rv_confirm", None)
    open_heads = [h for h in S.get("rv_open_heads", []) if h not in (heads or [])]
    if action != "skip" and heads and open_heads:  # the other head is still to review
        S["rv_open_heads"] = open_heads
        S["rv_focus"] = sample_id
        return True
    _card_done(sample_id)
    S["rv_left"] = max(0, S.get("rv_left", 1) - (0 if action == "skip" else 1))
    return True


def _advance() -> int | None:
    """After a key finished the card, make the next kept card the current one (leased, its
    classes and open heads read), so the next key of a quick series decides that card."""
    store, settings, user = common.store(), common.settings(), common.user()
    done = set(S.get("rv_decided", []))
    ahead = [i for i in S.get("rv_ahead", []) if i not in done]
    while ahead:
        sid = ahead.pop(0)
        S["rv_ahead"] = list(ahead)
        if not _lease(store, settings, S["rv_round"], user["id"], sid):
            continue
        mv_id = S.get("rv_card_model")
        with store.read() as s:
            mv_id = mv_id or views.round_model_version(s, round_id=S["rv_round"])
            cards = q.load_cards(s, model_version_id=mv_id, sample_ids=[sid])
            states = views.head_states(s, round_id=S["rv_round"], sample_id=sid)
        if not cards:
            continue
        S["rv_card"], S["rv_shown"] = sid, time.monotonic()
        S["rv_card_labels"] = {h: p["label"] for h, p in cards[0].predictions.items()}
        S["rv_open_heads"] = [h for h in S.get("rv_heads", []) if h not in states]
        # the card panel's rerun shows this card without reading it again
        S["rv_prepared"] = {"sid": sid, "model": mv_id, "card": cards[0], "states": states}
        return sid
    return None


def _on_keys() -> None:
    """Key listener callback: apply every new key press, in order, each to the card current when
    it is applied (a quick series decides one card after another)."""
    heads = list(S.get("rv_heads", []))
    head_keys = {k: h for h, k in _head_keys(heads).items()}
    for key, _shown in new_events(S.get("rv_keys") or {}, S.setdefault("rv_key_seq", {})):
        card = S.get("rv_card")
        if key == "U":
            _undo()
            continue
        if key == "H":
            _next_digit_head(heads)
            continue
        if card is None:
            card = _advance()
            if card is None:
                continue
        if key in ("A", "X", "S") or key in head_keys:
            action = {"A": "accept", "X": "reject", "S": "skip"}.get(key, "accept")
            only = [head_keys[key]] if key in head_keys else None
            _decide(action, card, only)
            if S.get("rv_card") is None:
                _advance()
        elif key == "0":
            _clear_override(card)
        elif key in DIGITS:
            head = S.get("rv_digit_head") or (heads[0] if heads else None)
            classes = (S.get("rv_classes") or {}).get(head, [])
            k = DIGITS.index(key)
            if head and k < len(classes):
                _set_override(card, head, classes[k])


def _undo(decision_id: int | None = None) -> None:
    """Button callback: undo the latest decision (or one from the history); its card returns."""
    sample_id = decisions.undo(
        common.store(), round_id=S["rv_round"], user=common.user(), decision_id=decision_id
    )
    if sample_id is None:
        common.flash("info", "Nothing to undo.", key="rv_flash")
        return
    current = S.get("rv_card")
    S["rv_focus"] = S["rv_card"] = sample_id
    S["rv_shown"] = time.monotonic()
    ahead = [i for i in S.get("rv_ahead", []) if i not in (sample_id, current)]
    S["rv_ahead"] = ([current] if current not in (None, sample_id) else []) + ahead
    with common.store().read() as s:
        decided = views.head_states(s, round_id=S["rv_round"], sample_id=sample_id)
    S["rv_open_heads"] = [h for h in S.get("rv_heads", []) if h not in decided]
    S.pop("rv_override", None)
    S.pop("rv_confirm", None)
    if "rv_left" in S:
        S["rv_left"] += 1
    done = S.get("rv_decided", [])
    if sample_id in done:
        done.remove(sample_id)
    common.flash("info", "Undone: the card is back.", key="rv_flash")


# --------------------------------------------------------------------------- the card


def _predictions(
    card: q.Card,
    heads: dict[str, list[str]],
    quotas: dict,
    overrides: dict[str, str],
    states: dict[str, tuple[str, str]],
    thresholds: dict[str, float],
) -> None:
    """Each head's prediction. Colour carries meaning: green a head accepted on this card, red a
    head rejected, orange a confidence under the round's threshold (accepting asks twice), blue
    a class set by the annotator."""
    cols = st.columns(len(heads))
    for col, (head, classes) in zip(cols, heads.items(), strict=False):
        pred = card.predictions.get(head)
        with col:
            if pred is None:
                st.markdown(f"**{head.capitalize()}**")
                st.caption("no prediction")
                continue
            chosen = overrides.get(head)
            state = states.get(head)
            if state:
                colour = "green" if state[0] == "accepted" else "red"
                icon = ":material/check_circle:" if state[0] == "accepted" else ":material/cancel:"
                st.markdown(
                    f"**{head.capitalize()}** · :{colour}[{icon} **{state[1]}** {state[0]}] "
                    "(decided)"
                )
            elif chosen:
                st.markdown(
                    f"**{head.capitalize()}** · ~~{pred['label']}~~ → :blue[**{chosen}**] "
                    "(your class)"
                )
            else:
                st.markdown(f"**{head.capitalize()}** · **{pred['label']}**")
            th = thr.threshold_for(thresholds.get(head, 0.0), pred["label"])
            if not state and not chosen and pred["confidence"] < th:
                st.markdown(
                    f":orange[:material/warning: confidence {pred['confidence']:.2f} is below "
                    f"the round's threshold {th:.2f} for {pred['label']}]"
                )
            for label, p in common.top3(pred["probs"] or [], classes):
                st.progress(min(1.0, max(0.0, p)), text=f"{label} · {p:.2f}")
            paths = pred.get("paths")
            if paths and len(paths) > 1:
                if len(set(paths)) == 1:
                    st.caption(f"{len(paths)} ensemble members agree")
                else:
                    st.caption(
                        ":orange[members disagree]: "
                        + " · ".join(f"member {k + 1}: {p}" for k, p in enumerate(paths))
                    )
            label = chosen or pred["label"]
            accepted, quota = quotas.get(head, {}).get(label, (0, 0))
            value = min(1.0, accepted / quota) if quota else 1.0
            st.progress(value, text=f"quota {label}: {accepted} / {quota}")


def _buttons(card_id: int, heads: list[str], has_card: bool, open_heads: list[str]) -> None:
    """The decision buttons (keys in brackets; the key listener presses them, see ``_keys``)."""
    keys = _head_keys(heads)
    row = st.container(horizontal=True, gap="small", key="rv_buttons")
    both = len(open_heads) == len(heads)
    row.button(
        "Accept both [A]" if both else "Accept the rest [A]",
        key="rv_accept",
        type="primary",
        disabled=not has_card,
        on_click=_decide,
        args=("accept", card_id),
        icon=":material/done_all:",
    )
    for head in heads:
        if head in keys:
            row.button(
                f"Accept {head} only [{keys[head]}]",
                key=f"rv_accept_{head}",
                disabled=not has_card or head not in open_heads,
                on_click=_decide,
                args=("accept", card_id, [head]),
            )
    row.button(
        "Reject [X]",
        key="rv_reject",
        disabled=not has_card,
        on_click=_decide,
        args=("reject", card_id),
        icon=":material/close:",
    )
    row.button(
        "Skip [S]",
        key="rv_skip",
        disabled=not has_card,
        on_click=_decide,
        args=("skip", card_id),
        icon=":material/skip_next:",
        help="The card goes to the end of the queue",
    )
    row.button("Undo [U]", key="rv_undo", on_click=_undo, icon=":material/undo:")


def _class_keys(card_id: int, heads: dict[str, list[str]], has_card: bool) -> str:
    """One button per class of the head the digits override (keys 1..K), H to switch head, 0 to
    clear; returns that head."""
    names = list(heads)
    head = S.get("rv_digit_head")
    if head not in heads:
        head = S["rv_digit_head"] = names[0]
    chosen = _overrides(card_id).get(head)
    row = st.container(
        horizontal=True, gap="small", vertical_alignment="center", key="rv_class_keys"
    )
    row.button(
        f"Digits: {head} [H]",
        key="rv_digit_head_btn",
        on_click=_next_digit_head,
        args=(names,),
        icon=":material/swap_horiz:",
        help="H switches the head whose class the digit keys set",
        disabled=len(names) < 2,
    )
    for k, label in enumerate(heads[head][: len(DIGITS)]):
        row.button(
            f"{DIGITS[k]} {label}",
            key=f"rv_digit_{k + 1}",
            type="primary" if label == chosen else "tertiary",
            disabled=not has_card,
            on_click=_set_override,
            args=(card_id, head, label),
        )
    row.button(
        "0 clear",
        key="rv_digit_0",
        type="tertiary",
        disabled=not has_card,
        on_click=_clear_override,
        args=(card_id,),
    )
    return head


def _key_map(heads: list[str], digit_head: str, n_classes: int) -> None:
    keys = _head_keys(heads)
    one = " · ".join(f"**{k}** {h} only" for h, k in keys.items())
    st.caption(
        f"Keys: **A** accept both (the heads still open) · {one} (the card stays for the "
        f"other head) · **X** reject · **S** skip to the end of the queue · **U** undo · "
        f"**1–{n_classes}** set the {digit_head} class (**H** other head, **0** clear), then "
        "A / E / I accept with it. Keys work whatever you clicked last, except while you type "
        "in a text box."
    )


def _history(rows: list[dict[str, Any]], heads: list[str]) -> None:
    st.markdown("##### Last decisions")
    if not rows:
        st.caption("None yet in this round.")
        return
    # keys by position, not by decision: after a decision every row moves down one place, and
    # stable keys let the browser update the rows in place instead of rebuilding them
    for k, d in enumerate(rows):
        labels = ", ".join(f"{h} {d['labels'][h]}" for h in heads if h in d["labels"])
        if d["action"] == "bulk accept":
            what = f"{d['cards']} cards"
            text = f"**bulk accept** · {what} · {common.ago(d['at'])}"
        else:
            note = " (below threshold)" if d.get("override") == "below_threshold" else ""
            text = (
                f"`{d['utt_id']}` · **{d['action']}**{note} · {labels or 'whole card'} · "
                f"{common.ago(d['at'])}"
            )
        common.decision_line(text, d, prefix="rv", k=k, on_undo=_undo)


def _empty_queue(store, round_id: int, flt: q.QueueFilter, user: dict[str, Any]) -> None:
    """No card: say why, and what an admin can change."""
    reasons = rounds_service.empty_queue_reasons(store, round_id=round_id, flt=flt, user=user)
    lines = [f"- {r['reason']} {r['fix']}" for r in reasons]
    done = reasons and reasons[0]["reason"].startswith("All ")
    box = st.success if done else st.warning
    box("**No card to review.**\n" + "\n".join(lines), icon=":material/inbox:")


def _review_keys(heads: dict[str, list[str]]) -> list[str]:
    keys = ["A", "X", "S", "U", "H", "0", *DIGITS[: max(len(c) for c in heads.values())]]
    return keys + list(_head_keys(list(heads)).values())


@st.fragment
def card_panel(round_id: int, heads: dict[str, list[str]], flt: q.QueueFilter) -> None:
    store, settings, user = common.store(), common.settings(), common.require_user()
    S["rv_heads"], S["rv_classes"] = list(heads), {h: list(c) for h, c in heads.items()}
    key_listener(_review_keys(heads), key="rv_keys", on_keys=_on_keys)
    for _ in range(3):  # another annotator may take a card between the read and the lease
        view = _load_view(store, round_id, user["id"], flt)
        card = view["card"]
        if card is None or _lease(store, settings, round_id, user["id"], card.sample_id):
            break
        S["rv_ahead"] = [i for i in view["ids"] if i != card.sample_id]
        S.pop("rv_card", None)
        if S.get("rv_focus") == card.sample_id:
            S.pop("rv_focus")
    if card is None:
        S.pop("rv_card", None)
    elif S.get("rv_card") != card.sample_id:
        S["rv_card"], S["rv_shown"] = card.sample_id, time.monotonic()
        S.pop("rv_confirm", None)
    S["rv_ahead"] = view["ids"][1:]
    S.pop("rv_focus", None)

    common.show_flash(key="rv_flash")
    if card is None:
        S.pop("rv_card_labels", None)
        _empty_queue(store, round_id, flt, user)
        _buttons(-1, list(heads), has_card=False, open_heads=[])
        _history(_read_history(store, round_id, user["id"]), list(heads))
        return
    # what an accept records: the classes shown (another model's, when the filter names one)
    S["rv_card_labels"] = {h: p["label"] for h, p in card.predictions.items()}
    open_heads = [h for h in heads if h not in view["states"]]
    S["rv_open_heads"] = open_heads
    other_model = view["model_version_id"] != view["round_model"]
    S["rv_card_model"] = view["model_version_id"] if other_model else None
    overrides = _overrides(card.sample_id)
    left = S.get("rv_left", 0)
    area = st.container(key="rv_card_area")
    top = area.container(horizontal=True, vertical_alignment="center", key="rv_card_top")
    top.markdown(
        f"<span class='meiju-utt'>{html.escape(card.utt_id)}</span> · {html.escape(card.source)}"
        f" · transcript {html.escape(card.transcript_source or '–')}"
        f" · **{left}** left in the queue"
        + (f" · predictions of model #{view['model_version_id']}" if other_model else ""),
        unsafe_allow_html=True,
        width="stretch",
    )
    top.toggle("Words", key="rv_words", help="Show the transcript segmented by jieba")
    top.page_link(
        TRANSCRIPTS_PAGE,
        label="Edit transcript",
        icon=":material/edit_note:",
        query_params={"sample": str(card.sample_id), "back": _back_query()},
    )
    main, side = area.columns([3, 2], gap="large")
    with main:
        common.transcript_block(card, words=bool(S.get("rv_words")))
        common.media_block(card)
    with side:
        _predictions(card, heads, view["quotas"], overrides, view["states"], view["thresholds"])
    with area:
        _buttons(card.sample_id, list(heads), has_card=True, open_heads=open_heads)
        digit_head = _class_keys(card.sample_id, heads, has_card=True)
    _key_map(list(heads), digit_head, min(len(heads[digit_head]), len(DIGITS)))
    _history(_read_history(store, round_id, user["id"]), list(heads))


def _back_query() -> str:
    """The Review queue's URL parameters, for the editor's "Back to Review" link."""
    return urlencode(S.get("rv_params", {}), safe=",")


# --------------------------------------------------------------------------- bulk accept


def _bulk_key(round_id: int, flt: q.QueueFilter) -> str:
    return f"{round_id}:{flt!r}"


def _run_preview(round_id: int, flt: q.QueueFilter) -> None:
    t = time.perf_counter()
    result = decisions.bulk_preview(common.store(), round_id=round_id, flt=flt, user=common.user())
    result["seconds"] = time.perf_counter() - t
    S["rv_bulk"] = {"key": _bulk_key(round_id, flt), "result": result}


def _run_bulk_accept(round_id: int, flt: q.QueueFilter) -> None:
    bulk = S.pop("rv_bulk", None)
    if not bulk or bulk["key"] != _bulk_key(round_id, flt):
        common.flash("warning", "The filter changed: preview again.", key="rv_page_flash")
        return
    items = bulk["result"]["items"]
    try:
        res = decisions.bulk_accept(
            common.store(),
            round_id=round_id,
            items=items,
            user=common.user(),
            model_version_id=flt.model_version_id,
        )
    except MeijuError as e:
        common.flash("error", str(e), key="rv_page_flash")
        return
    notes = []
    if res.leased:
        notes.append(f"{len(res.leased)} cards left out: other annotators hold them")
    if res.decided:
        notes.append(f"{res.decided} decided since the preview")
    if res.full:
        notes.append(f"{res.full} over a quota filled since the preview")
    note = f" ({'; '.join(notes)})" if notes else ""
    common.flash(
        "success",
        f"Bulk accepted {res.accepted} pseudo-labels{note}. **U** (Undo) takes the whole bulk "
        "back.",
        key="rv_page_flash",
    )
    _reset_cards()


def bulk_ui(store, round_id: int, flt: q.QueueFilter, user: dict[str, Any]) -> None:
    """Preview what bulk accept would take from the whole filtered queue under the quotas (the
    rule of automatic mode), then accept it with one confirmation (admins only)."""
    with st.expander("Bulk accept the filtered queue", icon=":material/library_add_check:"):
        st.caption(
            "Per head, the most confident open cards of the filtered queue above the round's "
            "threshold, within the quota each class has left: the rule of automatic mode. "
            "The accept re-checks every quota in one transaction."
        )
        st.button(
            "Preview",
            key="rv_bulk_preview",
            icon=":material/preview:",
            on_click=_run_preview,
            args=(round_id, flt),
        )
        bulk = S.get("rv_bulk")
        if not bulk or bulk["key"] != _bulk_key(round_id, flt):
            return
        res = bulk["result"]
        items = res["items"]
        for head, counts in res["counts"].items():
            rem = res["remaining"][head]
            table = pd.DataFrame(
                {
                    "accept": [counts[c] for c in counts],
                    "quota left": [rem.get(c, 0) for c in counts],
                },
                index=list(counts),
            ).T
            st.markdown(
                f"**{head.capitalize()}**: {sum(counts.values())} of "
                f"{res['candidates'].get(head, 0)} filtered cards"
            )
            st.dataframe(table, width="stretch", key=f"rv_bulk_counts_{head}")
        if items:
            ids = sorted({i for i, *_ in items[:200]})
            with store.read() as s:
                utt = views.utt_ids(s, sample_ids=ids)
            st.dataframe(
                pd.DataFrame(
                    [(utt.get(i, i), h, c, round(p, 4)) for i, h, c, p in items[:200]],
                    columns=["utterance", "head", "class", "confidence"],
                ),
                width="stretch",
                height=220,
                hide_index=True,
                key="rv_bulk_items",
            )
            if len(items) > 200:
                st.caption(f"First 200 of {len(items)} shown.")
        if not common.is_admin(user):
            st.caption("Only admins can bulk accept.")
            return
        st.button(
            f"Accept {len(items)} pseudo-labels",
            key="rv_bulk_confirm",
            type="primary",
            disabled=not items,
            on_click=_run_bulk_accept,
            args=(round_id, flt),
            icon=":material/done_all:",
        )


# --------------------------------------------------------------------------- page

QUEUES = {"pseudo": "Pseudo-labels", "issues": "Gold label issues"}


def queue_choice() -> str:
    """Which queue the page shows: ``pseudo`` (pseudo-label review) or ``issues`` (flagged gold
    labels, ``pages/_label_issues.py``); kept in the URL as ``?queue=issues``."""
    wanted = "issues" if st.query_params.get("queue") == "issues" else "pseudo"
    if S.get("rv_queue_seen") != wanted:  # a link or the address set it
        S["rv_queue"] = S["rv_queue_seen"] = wanted
    choice = st.segmented_control(
        "Queue",
        list(QUEUES),
        format_func=QUEUES.get,
        key="rv_queue",
        label_visibility="collapsed",
    )
    choice = choice or "pseudo"
    S["rv_queue_seen"] = choice
    if choice == "issues":
        st.query_params["queue"] = "issues"
    elif "queue" in st.query_params:
        del st.query_params["queue"]
    return choice


def main() -> None:
    user, store, settings = common.require_user(), common.store(), common.settings()
    project = common.project()
    st.title("Review")
    common.show_flash(key="rv_page_flash")
    if inspect_link(project):
        return
    if queue_choice() == "issues":
        from pages._label_issues import issues_view

        issues_view(project, user)
        return
    with store.read() as s:
        rnd = views.active_review_round(s, project_id=project["id"])
    top = st.container(horizontal=True, vertical_alignment="center")
    with top:
        round_summary(rnd)
    if common.is_admin(user):
        open_round_ui(store, settings, project, user, has_round=rnd is not None)
    if rnd is None:
        return
    if S.get("rv_round") != rnd["id"]:
        S["rv_round"] = rnd["id"]
        _reset_cards()
    versions = _predicted_versions(settings.database_url, project["id"])
    with top:
        flt = queue_filter_ui(project, rnd, versions)
    filter_summary(flt, S.get("rv_params", {}))
    card_panel(rnd["id"], project["heads"], flt)
    bulk_ui(store, rnd["id"], flt, user)


main()
