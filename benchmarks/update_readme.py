"""Regenerate the README's benchmark table from ``benchmarks/results/*.json``.

Each result file has a ``summary`` list of rows ``{"figure": str, "value": str, "goal": str,
"note": str}``; the table lists them in file-name order. ``tests/test_docs.py`` fails when the
README block differs from what this script would write, so the README never drifts from the
committed results.

Usage: ``python benchmarks/update_readme.py`` (``--check`` exits 1 if the README is stale).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def table() -> str:
    lines = ["| benchmark | figure | measured | goal | note |", "| --- | --- | --- | --- | --- |"]
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        for row in data.get("summary", []):
            lines.append(
                f"| `{path.stem}` | {row['figure']} | {row['value']} | "
                f"{row.get('goal', '')} | {row.get('note', '')} |"
            )
    return "\n".join(lines)


def render(readme: str) -> str:
    head, rest = readme.split(START, 1)
    _old, tail = rest.split(END, 1)
    return f"{head}{START}\n{table()}\n{END}{tail}"


def main(argv: list[str]) -> int:
    path = ROOT / "README.md"
    text = path.read_text(encoding="utf-8")
    new = render(text)
    if "--check" in argv:
        return 0 if new == text else 1
    path.write_text(new, encoding="utf-8")
    print(table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
