"""The ML layer: the model, its training, pseudo-label selection, metrics, features, media and text.

Nothing here imports the store (``db``), the services or the UI (enforced by ``make lint``): these
modules take arrays, tensors, paths and strings and return the same, so they can be read, tested
and reused without a database.
"""
