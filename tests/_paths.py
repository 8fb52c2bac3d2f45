"""Where the real data lives: CI clones the project with the shared folder beside it."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
SHARED_DATA = SHARED / "data"
DEMO = ROOT / "demo"
