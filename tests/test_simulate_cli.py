"""``meiju simulate-review`` end to end at tiny size on a small real project: the demo's CPED
utterances cut to a few hundred (real transcripts, real gold and withheld labels, builtin text
features), one seed, a checkpoint every 20 cards, one epoch per stage."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import delete, select
from typer.testing import CliRunner

from db.models import GoldLabel, Sample, Transcript
from meiju_core.cli import app as cli_app
from meiju_core.services import extraction, projects
from meiju_core.settings import Settings

pytestmark = pytest.mark.slow

KEEP = {"train": 160, "valid": 60, "test": 60, "pool": 120}


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    from meiju_core.io.cped import build_demo as import_demo

    data_dir = tmp_path_factory.mktemp("small-demo")
    settings = Settings.load(data_dir=str(data_dir), database_url="", project="demo")
    store = projects.open_store(settings)
    import_demo(store, project_name="demo")
    with store.write() as s:
        keep: list[int] = []
        for split, n in KEEP.items():
            cond = [Sample.split == split, Sample.source == "cped"]
            if split == "pool":
                cond.append(Sample.withheld.is_not(None))
            keep += s.scalars(select(Sample.id).where(*cond).order_by(Sample.id).limit(n)).all()
        drop = select(Sample.id).where(Sample.id.not_in(keep))
        s.execute(delete(GoldLabel).where(GoldLabel.sample_id.in_(drop)))
        s.execute(delete(Transcript).where(Transcript.sample_id.in_(drop)))
        s.execute(delete(Sample).where(Sample.id.not_in(keep)))
    extraction.extract_features(
        store, settings, project_id=projects.project_info(store, name="demo")["id"]
    )
    yield settings, store
    store.dispose()


def test_simulate_review_runs_every_curve_and_reuses_its_runs(small_demo, tmp_path):
    settings, store = small_demo
    args = [
        "--data-dir",
        str(settings.data_dir),
        "simulate-review",
        "--seeds",
        "1",
        "--budget",
        "40",
        "--every",
        "20",
        "--orders",
        "confidence,rarest",
        "--actions",
        "reject,correct",
        "--stage1-epochs",
        "1",
        "--stage2-epochs",
        "1",
        "--seconds",
        "4",
    ]
    out = CliRunner().invoke(cli_app, [*args, "--out", str(tmp_path / "rv")])
    assert out.exit_code == 0, out.output
    result = json.loads((tmp_path / "rv.json").read_text())
    seed = result["seeds"][str(settings.seed)]
    names = {"confidence/reject", "confidence/correct", "rarest/reject", "rarest/correct"}
    assert set(seed["curves"]) == names | {"automatic", "gold_labelling"}
    for name, curve in seed["curves"].items():
        assert [c["cards"] for c in curve] == [20, 40], name
        assert all(0 <= c["test"]["joint"] <= 1 for c in curve), name
    for name in names:  # the sessions went through the services, undos included
        sess = seed["sessions"][name]
        assert sess["cards"] == 40 and sess["service_calls"]["lease"] >= 40
        assert sess["accepted"] + sess["corrected"] + sess["rejected"] == 80  # two heads a card
        if name.endswith("reject"):
            assert sess["corrected"] == 0
    # hours: 4 s a card, a correction 8 s; gold labelling costs a correction per sample
    assert seed["curves"]["confidence/reject"][-1]["hours"] == pytest.approx(40 * 4 / 3600, 0.2)
    assert seed["curves"]["gold_labelling"][-1]["hours"] == pytest.approx(40 * 8 / 3600)
    assert result["scores"]["best"]["curve"] in names
    html = (tmp_path / "rv.html").read_text()
    assert "Plotly.newPlot" in html and "gold_labelling" in html and "annotator-hours" in html
    assert "| confidence/correct |" in (tmp_path / "rv.md").read_text()
    again = CliRunner().invoke(cli_app, args)
    assert again.exit_code == 0, again.output
    assert "0 stage-2 runs trained" in again.output  # every run came from the cache
    # the project's own store is untouched: the rounds went to the benchmark's copy
    from db import queries as q

    with store.read() as s:
        assert q.active_round(s, project_id=1) is None


def test_simulate_review_refuses_bad_options_by_name(small_demo):
    settings, _store = small_demo
    base = ["--data-dir", str(settings.data_dir), "simulate-review", "--seeds", "1"]
    for extra, word in (
        (["--orders", "newest"], "--orders"),
        (["--actions", "skip"], "--actions"),
        (["--points", "a,b"], "--points"),
        (["--budget", "100", "--every", "30", "--points", "50"], "points"),
        (["--error-rate", "2"], "error_rate"),
    ):
        out = CliRunner().invoke(cli_app, [*base, *extra])
        assert out.exit_code != 0, extra
        assert word in out.output, (extra, out.output)
        assert "Traceback" not in out.output
