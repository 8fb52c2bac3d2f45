"""The ``meiju`` command: the review loop headless, one subcommand per arrow of the loop.

Every command calls the same ``meiju_core.services`` function the app and the worker call. Heavy
modules (torch, the model) are imported inside commands, so ``meiju --help`` is instant.
Global options override settings (``MEIJU_*`` environment variables work too).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from meiju_core.errors import InputError, MeijuError
from meiju_core.settings import SETTINGS, Settings

app = typer.Typer(
    help="MEIJU Review: pseudo-label review and retraining for joint emotion + intent models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
user_app = typer.Typer(help="Manage users.", no_args_is_help=True)
export_app = typer.Typer(help="Export labels and predictions.", no_args_is_help=True)
import_app = typer.Typer(
    help="Import utterances, label lists, a MEIJU release or feature files.", no_args_is_help=True
)
app.add_typer(user_app, name="user")
app.add_typer(export_app, name="export")
app.add_typer(import_app, name="import")

REPO_ROOT = Path(__file__).resolve().parent.parent
_state: dict[str, Any] = {}


@app.callback()
def _global(
    data_dir: Annotated[str | None, typer.Option(help="Data folder (MEIJU_DATA_DIR).")] = None,
    database_url: Annotated[str | None, typer.Option(help="Database URL.")] = None,
    project: Annotated[str | None, typer.Option(help="Project name.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
) -> None:
    with _friendly():
        _state["settings"] = Settings.load(
            data_dir=data_dir, database_url=database_url, project=project, device=device
        )


def _settings() -> Settings:
    return _state.get("settings") or Settings.load()


@contextlib.contextmanager
def _friendly() -> Iterator[None]:
    try:
        yield
    except MeijuError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(1) from e


@contextlib.contextmanager
def _bar(description: str) -> Iterator[Any]:
    """A rich progress bar fed by the services' progress events."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=1.0)

        def update(event: dict[str, Any]) -> None:
            if "progress" in event:
                bar.update(task, completed=float(event["progress"]))
            if event.get("message"):
                bar.update(task, description=str(event["message"])[:60])

        yield update


def _store_and_project():
    from meiju_core.services import (
        projects,
    )

    settings = _settings()
    with _friendly():
        store = projects.open_store(settings)
    info = projects.project_info(store, name=settings.project)
    if info is None:
        typer.secho(
            f"error: no project {settings.project!r}; run `meiju demo` or import one",
            fg="red",
            err=True,
        )
        raise typer.Exit(1)
    return settings, store, info


def _model_version_id(store, info: dict[str, Any], given: int | None) -> int:
    """``given``, else the project's current model version; a clear error when it has none."""
    from db import queries as q

    if given is not None:
        return given
    with store.read() as s:
        mv = q.current_model(s, project_id=info["id"])
    if mv is None:
        typer.secho(
            "error: the project has no model version yet; run `meiju train` first",
            fg="red",
            err=True,
        )
        raise typer.Exit(1)
    return mv.id


@app.command()
def init() -> None:
    """Create or migrate the database (alembic upgrade head)."""
    from meiju_core.services import (
        projects,
    )

    settings = _settings()
    projects.open_store(settings)
    typer.echo(f"store ready: {settings.database_url}")


@app.command()
def demo(
    epochs: Annotated[
        int | None, typer.Option(help="Stage-1 epochs (default: the preset's).")
    ] = None,
    password: Annotated[str, typer.Option(help="Password of the demo admin.")] = "meiju-demo",
) -> None:
    """Build the demo project from real data (CPED + GRID + Mandarin speech), train stage 1 and
    open the first review round. Skips whatever is already built."""
    from meiju_core.services import demo as demo_service
    from meiju_core.services import (
        projects,
    )

    settings = _settings()
    with _friendly(), _bar("building the demo") as update:
        store = projects.open_store(settings)
        summary = demo_service.build_demo(
            store, settings, admin_password=password, epochs=epochs, progress=update
        )
    typer.echo(f"demo project ready: {summary.get('splits', summary)}")
    typer.echo(f"log in as admin / {password}")


@user_app.command("add")
def user_add(
    name: str,
    role: Annotated[str, typer.Option(help="annotator or admin.")] = "annotator",
    password: Annotated[str | None, typer.Option(prompt=True, hide_input=True)] = None,
) -> None:
    """Create a user (or change its role and password)."""
    from meiju_core.services import (
        projects,
        users,
    )

    with _friendly():
        store = projects.open_store(_settings())
        uid = users.add_user(store, name=name, role=role, password=password)
    typer.echo(f"user {name} ({role}) saved as #{uid}")


@app.command()
def worker(
    lane: Annotated[
        list[str] | None,
        typer.Option(
            help="Lane to run: train (training, one at a time) or io (imports, exports, "
            "extraction, prediction); repeat for both (the default)."
        ),
    ] = None,
) -> None:
    """Run the job worker until Ctrl-C: one process per lane, so an export never waits behind a
    retrain; jobs whose process died are re-queued (training resumes) or failed."""
    from meiju_core.services.jobs import LANES, run_worker

    lanes = tuple(lane or LANES)
    bad = [x for x in lanes if x not in LANES]
    if bad:
        typer.secho(f"error: --lane {bad[0]!r}: lanes are {', '.join(LANES)}", fg="red", err=True)
        raise typer.Exit(2)
    run_worker(_settings(), lanes=lanes)


@app.command()
def run(
    port: Annotated[int, typer.Option(help="Port of the app.")] = 8501,
    address: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
) -> None:
    """Start the app and its worker together; Ctrl-C, SIGINT or SIGTERM stops both."""
    settings = _settings()
    env = {
        **os.environ,
        "MEIJU_DATA_DIR": str(settings.data_dir),
        "MEIJU_DATABASE_URL": settings.database_url,
        "MEIJU_PROJECT": settings.project,
    }
    procs = [
        subprocess.Popen([sys.executable, "-m", "meiju_core.cli", "worker"], env=env),
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                str(REPO_ROOT / "app.py"),
                "--server.port",
                str(port),
                "--server.address",
                address,
                "--server.headless",
                "true",
                "--browser.gatherUsageStats",
                "false",
            ],
            env=env,
        ),
    ]
    typer.echo(f"app on http://{address}:{port} (worker pid {procs[0].pid}); Ctrl-C stops both")

    def _stop(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    # in the background a shell starts us with SIGINT ignored, and SIGTERM would end us without
    # stopping the children: both signals stop app and worker together
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        while all(p.poll() is None for p in procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                procs[1].wait(timeout=1)
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # children of a background job ignore SIGINT
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


@app.command()
def extract(
    set_name: Annotated[
        str, typer.Option("--set", help="Feature set: builtin or pretrained.")
    ] = "builtin",
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Processes for the media part (default: the extract_workers setting, "
            "MEIJU_EXTRACT_WORKERS; 0 there means one per CPU).",
        ),
    ] = None,
) -> None:
    """Extract features for every sample: resumable, parallel; re-runs skip what is up to date."""
    from meiju_core.services import (
        extraction,
    )

    settings, store, info = _store_and_project()
    with _friendly(), _bar(f"extracting {set_name} features") as update:
        fs = extraction.extract_features(
            store,
            settings,
            project_id=info["id"],
            set_name=set_name,
            progress=update,
            workers=workers,
        )
    typer.echo(f"feature set #{fs} ready")


@app.command()
def train(
    stage: Annotated[
        int, typer.Option(help="1: gold labels; 2: gold + accepted pseudo-labels.")
    ] = 1,
    preset: Annotated[
        str | None, typer.Option(help="paper, baseline or fast (default: the project's).")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Total epochs (default: the preset's).")
    ] = None,
    round_id: Annotated[int | None, typer.Option("--round", help="Round for stage 2.")] = None,
    promote: Annotated[bool, typer.Option(help="Promote the new model version.")] = False,
) -> None:
    """Train a model version, predict every sample and score it on valid and test."""
    from db import queries as q
    from meiju_core.services import (
        training,
    )

    settings, store, info = _store_and_project()
    with _friendly(), _bar(f"training stage {stage}") as update:
        mv_id = training.train(
            store,
            settings,
            project_id=info["id"],
            stage=stage,
            preset=preset,
            round_id=round_id,
            epochs=epochs,
            progress=update,
        )
    if promote:
        with store.write() as s:
            q.promote(s, model_version_id=mv_id)
    _print_metrics(store, mv_id)


def _print_metrics(store, mv_id: int) -> None:
    from db.models import ModelVersion

    with store.read() as s:
        mv = s.get(ModelVersion, mv_id)
        metrics, seconds = mv.metrics, mv.train_seconds
    typer.echo(f"model version #{mv_id}: trained in {seconds or 0:.1f} s")
    for split in ("valid", "test"):
        m = metrics.get(split)
        if m:
            typer.echo(
                f"  {split:5s} emotion F1 {m['emotion_f1']:.4f}  intent F1 "
                f"{m['intent_f1']:.4f}  joint {m['joint']:.4f}  (n={m['n']})"
            )


def _ids(text: str, option: str) -> list[int]:
    try:
        ids = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected model version ids like 4,5, got {text!r}") from None
    if not ids:
        raise typer.BadParameter(f"{option} needs at least one model version id")
    return ids


@app.command()
def ensemble(
    emotion: Annotated[str, typer.Option(help="Model version id(s) for emotion, e.g. 3.")],
    intent: Annotated[str, typer.Option(help="Model version id(s) for intent, e.g. 4,5.")],
    name: Annotated[str | None, typer.Option(help="Name of the new version.")] = None,
    promote: Annotated[bool, typer.Option(help="Promote the new model version.")] = False,
) -> None:
    """A model version that averages separately trained versions' probabilities per head (the
    paper's final row: emotion from one system, intent fused from a 1-head and a 2-head one)."""
    from db import queries as q
    from meiju_core.services import (
        ensembles,
    )

    members = {"emotion": _ids(emotion, "--emotion"), "intent": _ids(intent, "--intent")}
    settings, store, info = _store_and_project()
    with _friendly():
        mv_id = ensembles.create_ensemble(
            store, settings, project_id=info["id"], members=members, name=name
        )
    if promote:
        with store.write() as s:
            q.promote(s, model_version_id=mv_id)
    _print_metrics(store, mv_id)


@app.command()
def table1(
    seeds: Annotated[int, typer.Option(help="Seeds per row (336, 337, ...).")] = 3,
    epochs: Annotated[
        int | None, typer.Option(help="Total epochs of every stage (default: the presets').")
    ] = None,
    threshold: Annotated[float, typer.Option(help="Pseudo-label confidence (paper: 0.99).")] = 0.99,
    budget: Annotated[int, typer.Option(help="Most pseudo-labels per head.")] = 2000,
    out: Annotated[
        Path | None, typer.Option(help="Write <out>.md and <out>.json (default: print only).")
    ] = None,
) -> None:
    """The paper's Table I, row by row, on the active project (test scores, mean ± std over
    seeds, the paper's numbers beside them). Runs already trained are reused."""
    import json

    from meiju_core.services import table1 as t1

    settings, store, info = _store_and_project()
    if not 0 < threshold <= 1 or seeds < 1 or budget < 0:
        raise typer.BadParameter("need 0 < threshold <= 1, seeds >= 1 and budget >= 0")
    opts = t1.Table1Options(
        seeds=tuple(settings.seed + i for i in range(seeds)),
        epochs=epochs,
        threshold=threshold,
        budget=budget,
        rule=settings.pseudo_rule,
        device=settings.device,
        feature_set=settings.feature_set,
    )
    with _friendly(), _bar("Table I") as update:
        result = t1.run_table1(
            store,
            project_id=info["id"],
            data_dir=settings.data_dir,
            options=opts,
            progress=update,
        )
    text = t1.markdown(result)
    typer.echo(text)
    typer.echo(f"wall time {result['seconds']:.0f} s")
    if out is not None:
        out.with_suffix(".md").write_text(text + "\n")
        out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))


def _names(text: str | None, option: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """A comma list of names, each one of ``allowed``; a clear error naming the option."""
    if text is None:
        return allowed
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise typer.BadParameter(
            f"{option}: {', '.join(bad) or 'nothing given'}; choose from {', '.join(allowed)}"
        )
    return names


@app.command("simulate-review")
def simulate_review(
    seeds: Annotated[int, typer.Option(help="Seeds (336, 337, ...): one stage-1 model each.")] = 3,
    budget: Annotated[int, typer.Option(help="Cards per queue order and action.")] = 2000,
    every: Annotated[int, typer.Option(help="A checkpoint every N cards.")] = 250,
    points: Annotated[
        str | None,
        typer.Option(help="Card counts to train stage 2 at, e.g. 500,1000,2000 (default: all)."),
    ] = None,
    orders: Annotated[
        str | None,
        typer.Option(help="Queue orders, comma-separated (default: all four)."),
    ] = None,
    actions: Annotated[
        str | None, typer.Option(help="reject and/or correct, comma-separated (default: both).")
    ] = None,
    combos: Annotated[
        str | None,
        typer.Option(
            help="order/action pairs instead of every order with every action, e.g. "
            "confidence/reject,confidence/correct,rarest/correct."
        ),
    ] = None,
    error_rate: Annotated[float, typer.Option(help="Chance the annotator errs, per head.")] = 0.05,
    seconds: Annotated[
        float | None,
        typer.Option(help="Seconds per card (default: the dashboard's median, else 3)."),
    ] = None,
    undo_rate: Annotated[float, typer.Option(help="Chance of an undo after a card.")] = 0.01,
    preset: Annotated[str, typer.Option(help="Training preset of both stages.")] = "fast",
    stage1_epochs: Annotated[
        int | None, typer.Option(help="Stage-1 epochs (default: the preset's).")
    ] = None,
    stage2_epochs: Annotated[int, typer.Option(help="Stage-2 epochs per checkpoint.")] = 4,
    out: Annotated[
        Path | None,
        typer.Option(help="Write <out>.json, <out>.md and <out>.html (default: print only)."),
    ] = None,
) -> None:
    """What review buys: a simulated annotator works a round per queue order and action through
    the Review page's services, against the pool's withheld labels; stage 2 after every N cards,
    test joint score beside the automatic rule, gold labelling and stage 2 on gold alone. Runs
    already done are reused."""
    import json

    from db import queries as q
    from meiju_core.services import simulate as sim

    settings, store, info = _store_and_project()
    try:
        pts = tuple(int(p) for p in points.split(",") if p.strip()) if points else None
    except ValueError:
        raise typer.BadParameter(
            f"--points: whole numbers, comma-separated; got {points!r}"
        ) from None
    if seeds < 1:
        raise typer.BadParameter("--seeds must be >= 1")
    opts = sim.ValueOptions(
        seeds=tuple(settings.seed + i for i in range(seeds)),
        budget=budget,
        every=every,
        points=pts,
        orders=_names(orders, "--orders", q.QUEUE_ORDERS),
        actions=_names(actions, "--actions", sim.ACTIONS),
        combos=tuple(c.strip() for c in combos.split(",") if c.strip()) if combos else None,
        error_rate=error_rate,
        seconds_per_decision=seconds,
        undo_rate=undo_rate,
        preset=preset,
        stage1_epochs=stage1_epochs,
        stage2_epochs=stage2_epochs,
        device=settings.device,
        feature_set=settings.feature_set,
    )
    with _friendly(), _bar("simulated review") as update:
        result = sim.run_review_value(
            store, project_id=info["id"], data_dir=settings.data_dir, options=opts, progress=update
        )
    text = sim.table(result)
    typer.echo(text)
    typer.echo(f"wall time {result['seconds']:.0f} s, {result['new_runs']} stage-2 runs trained")
    if out is not None:
        out.with_suffix(".md").write_text(text + "\n")
        out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
        sim.figure(result).write_html(out.with_suffix(".html"), include_plotlyjs="cdn")


@app.command("label-issues")
def label_issues(
    split: Annotated[str, typer.Option(help="Split whose gold labels are checked.")] = "train",
    show: Annotated[int, typer.Option(help="Flags to print per head.")] = 10,
    folds: Annotated[int, typer.Option(help="Cross-validation folds (>= 2).")] = 5,
) -> None:
    """Flag gold labels that are likely wrong (cross-validated probabilities + cleanlab); the
    flags open in Review as a queue of their own (a round of kind label_issues)."""
    from meiju_core.services import label_check

    if folds < 2:
        raise typer.BadParameter("--folds must be at least 2")
    settings, store, info = _store_and_project()
    with _friendly(), _bar("checking gold labels") as update:
        report = label_check.check_gold_labels(
            store, settings, project_id=info["id"], split=split, folds=folds, progress=update
        )
    typer.echo(f"round #{report['round_id']} holds the flags: Review > Gold label issues")
    for head, issues in report["issues"].items():
        typer.echo(
            f"{head}: {report['flagged'][head]} of {report['checked'][head]} {split} gold "
            "labels flagged"
        )
        for i in issues[:show]:
            typer.echo(
                f"  {i['utt_id']}: {i['given']} -> {i['suggested']} "
                f"(quality {i['quality']:.3f}, p {i['confidence']:.2f})"
            )


@app.command()
def predict(
    model_version: Annotated[int | None, typer.Option(help="Model version id.")] = None,
) -> None:
    """Predict every sample with a model version (default: the current one)."""
    from meiju_core.services import (
        training,
    )

    settings, store, info = _store_and_project()
    mv = _model_version_id(store, info, model_version)
    with _friendly():
        n = training.predict(store, settings, model_version_id=mv)
        training.evaluate(store, model_version_id=mv)
    typer.echo(f"{n} predictions written for model version #{mv}")


@app.command()
def evaluate(
    model_version: Annotated[int | None, typer.Option(help="Model version id.")] = None,
) -> None:
    """Weighted F1 per head and the joint score on valid and test."""
    from meiju_core.services import (
        training,
    )

    _settings_, store, info = _store_and_project()
    mv = _model_version_id(store, info, model_version)
    training.evaluate(store, model_version_id=mv)
    _print_metrics(store, mv)


@app.command("pseudo-label")
def pseudo_label(
    auto: Annotated[
        bool, typer.Option(help="Accept automatically (highest confidence first, within quotas).")
    ] = False,
    threshold: Annotated[float | None, typer.Option(help="Confidence threshold per head.")] = None,
    quota: Annotated[str | None, typer.Option(help="balanced, proportional or explicit.")] = None,
    budget: Annotated[int | None, typer.Option(help="Most pseudo-labels per head.")] = None,
    model_version: Annotated[int | None, typer.Option(help="Model version id.")] = None,
    rule: Annotated[
        str | None, typer.Option(help="joint (both labels or none) or per_head.")
    ] = None,
    confidence: Annotated[
        str | None, typer.Option(help="raw (softmax, the paper) or calibrated.")
    ] = None,
    thresholds_from_review: Annotated[
        int | None,
        typer.Option(
            help="Round id: take per-class thresholds from that round's review decisions "
            "(the lowest confidence reaching --precision; classes without enough decisions "
            "keep that round's threshold). Not with --threshold."
        ),
    ] = None,
    precision: Annotated[
        float, typer.Option(help="Precision the review-based thresholds reach (0-1].")
    ] = 0.95,
    min_decisions: Annotated[
        int, typer.Option(help="Reviewed pseudo-labels a class needs for its own threshold.")
    ] = 20,
    order: Annotated[
        str,
        typer.Option(
            help="Queue order of the round: confidence (most confident first, the paper's), "
            "uncertainty (least confident first), disagreement (heads or ensemble members "
            "disagree first) or rarest (rarest predicted class first, round robin)."
        ),
    ] = "confidence",
) -> None:
    """Open a review round; with --auto, fill its quotas the paper's way, without a human."""
    from meiju_core.services import (
        decisions,
        rounds,
    )

    settings, store, info = _store_and_project()
    mv = _model_version_id(store, info, model_version)
    if thresholds_from_review is not None and threshold is not None:
        raise typer.BadParameter("give --threshold or --thresholds-from-review, not both")
    with _friendly():
        th: Any = threshold
        if thresholds_from_review is not None:
            ev = rounds.thresholds_from_evidence(
                store,
                round_id=thresholds_from_review,
                precision=precision,
                min_count=min_decisions,
            )
            th = ev["thresholds"]
            for row in ev["rows"]:
                source = "review" if row["evidence"] is not None else "kept"
                typer.echo(
                    f"  {row['head']} {row['class']}: {row['next']:.3f} ({source}; "
                    f"{row['accepted']} of {row['reviewed']} accepted)"
                )
        rid = rounds.open_round(
            store,
            settings,
            project_id=info["id"],
            model_version_id=mv,
            thresholds=th,
            strategy=quota,
            budget=budget,
            queue_order=order,
        )
        typer.echo(f"round #{rid} open on model version #{mv} (queue order: {order})")
        if auto:
            with _bar("accepting pseudo-labels") as update:
                out = decisions.auto_pseudo_label(
                    store,
                    round_id=rid,
                    progress=update,
                    rule=rule or settings.pseudo_rule,
                    confidence=confidence or settings.pseudo_confidence,
                )
            typer.echo(f"accepted: {out}")


def _export_rows(
    export: Callable[..., int], path: Path, *, settings: bool = True, **options: Any
) -> None:
    """Write one CSV of the active project with ``export`` (a ``meiju_core.io.export`` function,
    called with the store, the settings unless ``settings`` is off, ``project_id``, ``path`` and
    ``options``) and print how many rows it wrote."""
    settings_, store, info = _store_and_project()
    args = (store, settings_) if settings else (store,)
    with _friendly():
        n = export(*args, project_id=info["id"], path=path, **options)
    typer.echo(f"{n} rows written to {path}")


@export_app.command("submission")
def export_submission(
    path: Annotated[Path, typer.Argument(help="Output CSV.")] = Path("submission.csv"),
    split: Annotated[str, typer.Option(help="Split to export.")] = "test",
) -> None:
    """Write submission.csv (filename,emo_pred,int_pred) with label strings."""
    from meiju_core.io import export

    _export_rows(export.export_submission, path, settings=False, split=split)


@export_app.command("labels")
def export_labels_cmd(
    path: Annotated[Path, typer.Argument(help="Output CSV.")] = Path("labels.csv"),
    round_id: Annotated[int | None, typer.Option("--round", help="Only this round's.")] = None,
) -> None:
    """Gold labels and accepted pseudo-labels with provenance (source, model, reviewer)."""
    from meiju_core.io.export import export_labels

    _export_rows(export_labels, path, round_id=round_id)


@export_app.command("decisions")
def export_decisions_cmd(
    path: Annotated[Path, typer.Argument(help="Output CSV.")] = Path("decisions.csv"),
    round_id: Annotated[int | None, typer.Option("--round", help="Only this round's.")] = None,
) -> None:
    """The review decision log (who decided what, when, with undo links)."""
    from meiju_core.io.export import export_decisions

    _export_rows(export_decisions, path, round_id=round_id)


@export_app.command("edits")
def export_edits_cmd(
    path: Annotated[Path, typer.Argument(help="Output CSV.")] = Path("transcript_edits.csv"),
) -> None:
    """Every transcript edit (before, after, editor, time)."""
    from meiju_core.io.export import export_transcript_edits

    _export_rows(export_transcript_edits, path)


@export_app.command("baseline")
def export_baseline_cmd(
    out_dir: Annotated[Path, typer.Argument(help="Output folder.")] = Path("baseline"),
    set_name: Annotated[str, typer.Option("--set", help="Feature set name.")] = "builtin",
    fill_missing: Annotated[
        bool, typer.Option(help="Zeros for a missing modality instead of skipping.")
    ] = False,
) -> None:
    """A feature set in the official MEIJU baseline's layout (features, lists, config)."""
    from sqlalchemy import select

    from db.models import FeatureSet
    from meiju_core.io.meiju import export_baseline_layout

    _s, store, info = _store_and_project()
    with _friendly():
        with store.read() as s:
            fs = s.scalar(
                select(FeatureSet.id).where(
                    FeatureSet.project_id == info["id"], FeatureSet.name == set_name
                )
            )
        if fs is None:
            raise InputError(f"no feature set {set_name!r} in the project", field="--set")
        out = export_baseline_layout(store, info["id"], fs, out_dir, fill_missing=fill_missing)
    typer.echo(f"written {out.written} to {out.target_root}; config {out.config_path}")
    typer.echo(f"baseline flags: {out.flags}")


def _import(params: dict[str, Any], *, project: bool = True, prepare: bool = True) -> None:
    """Run one import (``meiju_core.io.imports``), then extract and predict the new utterances
    with the current model unless ``prepare`` is off; print the summary and the new cards."""
    from meiju_core.io.imports import run_import
    from meiju_core.services import (
        extraction,
        projects,
    )

    if project:
        settings, store, info = _store_and_project()
        project_id = info["id"]
    else:
        settings, project_id = _settings(), None
        store = projects.open_store(settings)
    with _friendly():
        before = None if project_id is None else extraction.open_cards(store, project_id=project_id)
        summary = run_import(store, project_id=project_id, params=params)
        shown = {k: v for k, v in summary.items() if k in ("samples", "splits", "transcripts")}
        typer.echo(f"imported {params['path']}: {shown or summary}")
        if project_id is not None and prepare:
            with _bar("extracting and predicting") as update:
                out = extraction.prepare_new_samples(
                    store, settings, project_id=project_id, progress=update, cards_before=before
                )
            if out.get("new_cards") is not None:
                typer.echo(f"{out['new_cards']} new cards in the Review queue")
            if out.get("note"):
                typer.echo(out["note"])


_PREPARE = typer.Option(
    help="Extract features and predict the new utterances with the current model afterwards."
)


@import_app.command("csv")
def import_csv_cmd(
    path: Annotated[Path, typer.Argument(help="CSV of utterances (UTF-8).")],
    default_split: Annotated[
        str | None, typer.Option(help="Split of rows without one (train/valid/test/pool).")
    ] = None,
    prepare: Annotated[bool, _PREPARE] = True,
) -> None:
    """Utterances (id, text, split, labels per head) into the project: all rows or none."""
    params = {"source": "csv", "path": str(path)}
    if default_split is not None:
        params["default_split"] = default_split
    _import(params, prepare=prepare)


@import_app.command("labels")
def import_labels_cmd(
    path: Annotated[Path, typer.Argument(help="MEIJU label list (<utt_id> <emotion> <intent>).")],
    split: Annotated[str, typer.Option(help="Split of the listed utterances.")] = "train",
    prepare: Annotated[bool, _PREPARE] = True,
) -> None:
    """A MEIJU label list into the project: all lines or none."""
    _import({"source": "labels", "path": str(path), "split": split}, prepare=prepare)


@import_app.command("release")
def import_release_cmd(
    path: Annotated[Path, typer.Argument(help="Folder holding Track1/<Lang> (or that folder).")],
    project_name: Annotated[str, typer.Option("--name", help="New project's name.")],
    lang: Annotated[str, typer.Option(help="Mandarin or English.")] = "Mandarin",
    probe_media: Annotated[bool, typer.Option(help="Read each media file's duration.")] = True,
) -> None:
    """A MEIJU 2025 Track I release folder into a new project."""
    params = {
        "source": "release",
        "path": str(path),
        "project_name": project_name,
        "lang": lang,
        "probe_media": probe_media,
    }
    _import(params, project=False)


@import_app.command("npy")
def import_npy_cmd(
    path: Annotated[Path, typer.Argument(help="Folder of <modality dir>/<utt_id>.npy files.")],
    set_name: Annotated[str, typer.Option("--set", help="Feature set name.")] = "meiju-npy",
    replace: Annotated[bool, typer.Option(help="Replace a feature set of that name.")] = False,
) -> None:
    """Per-utterance feature files (the baseline's FRAME features) as a feature set."""
    params = {"source": "npy", "path": str(path), "set_name": set_name, "replace": replace}
    _import(params, prepare=False)


@app.command()
def transcribe(
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many samples.")] = None,
) -> None:
    """ASR (Whisper) transcripts for the pool samples that have none; re-runs continue."""
    from meiju_core.io.meiju import transcribe_pool

    _s, store, info = _store_and_project()
    with _friendly(), _bar("transcribing the pool") as update:
        out = transcribe_pool(store, info["id"], limit=limit, progress=update)
    typer.echo(f"{out.done} transcripts stored in {out.seconds:.1f} s")
    for utt, why in out.failed.items():
        typer.echo(f"  {utt}: {why}")


@app.command()
def settings() -> None:
    """Show every setting, its value and its help."""
    resolved = _settings().as_dict()
    for name, default, help_ in SETTINGS:
        typer.echo(f"{name:16s} {resolved[name]!s:40s} {help_}  [default: {default}]")


def main() -> None:
    """The ``meiju`` entry point: any error a person can fix is one line on stderr, exit 1."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        app()
    except MeijuError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise SystemExit(1) from None
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        typer.secho(f"error: {where}{e.strerror or e}", fg="red", err=True)
        raise SystemExit(1) from None
    except SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        typer.secho(f"error: database: {reason}", fg="red", err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
