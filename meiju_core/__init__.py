"""MEIJU Review's core, one folder per layer (shared/DESIGN.md; README "How it is built").

- ``ml/``: the model, training, pseudo-label selection, metrics, features, media and text;
  arrays, tensors, paths and strings in and out, never the store.
- ``services/``: the arrows of the loop over the store (projects, users, extraction, training,
  ensembles, rounds, decisions, transcripts, demo, jobs, ...), what the pages, the CLI, the
  worker and the tests call.
- ``io/``: importers and exporters (CSV, label lists, the MEIJU release layout, submissions).
- ``cli.py``: the ``meiju`` command.
- ``errors``, ``schema``, ``settings``, ``validate``: shared by every layer.

The store is the top-level ``db`` package; the UI is ``app.py`` and ``pages/``. ``make lint``
keeps the imports pointing downward (import-linter contracts in pyproject.toml).
"""
