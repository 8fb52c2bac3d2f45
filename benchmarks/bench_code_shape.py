"""The shape of the code: lines per file and per function, now and at a base revision.

Reads the project's Python sources (``app.py``, ``pages/``, ``meiju_core/``, ``db/``, migrations
left out) with :mod:`ast`, as they are in the working tree and as they were at ``--base`` (read
with ``git show``, nothing checked out), and prints:

- files: count, total lines, the longest files;
- functions (methods and nested functions included, each counted from its ``def`` line to its
  last line): count, median length, the 10 longest;
- the import contracts ``lint-imports`` keeps now (``[tool.importlinter]`` in pyproject.toml),
  when import-linter is installed;
- the ``duplicates`` pairs (places sharing six or more lines), when that command is on PATH, for
  the working tree and for a copy of the base revision.

Usage: ``python benchmarks/bench_code_shape.py [--base REV]`` (default base: the commit before
issue 12's changes). Writes ``benchmarks/results/code_shape.json``.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "code_shape.json"
BASE = "2a110e3"  # main before the layer work of issue 12
TOP = 10
SOURCES = ("app.py", "pages/", "meiju_core/", "db/")
SKIP = ("db/migrations/",)


def _wanted(path: str) -> bool:
    return (
        path.endswith(".py")
        and any(path == s or path.startswith(s) for s in SOURCES)
        and not any(path.startswith(s) for s in SKIP)
    )


def _git(*args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True).stdout


def sources_at(rev: str | None) -> dict[str, str]:
    """``{path: text}`` of the measured files in the working tree (``rev`` None) or at ``rev``."""
    if rev is None:
        tracked = _git("ls-files", "--cached", "--others", "--exclude-standard").decode().split()
        return {
            p: (ROOT / p).read_text(encoding="utf-8")
            for p in tracked
            if _wanted(p) and (ROOT / p).is_file()
        }
    names = _git("ls-tree", "-r", "--name-only", rev).decode().split()
    return {p: _git("show", f"{rev}:{p}").decode("utf-8") for p in names if _wanted(p)}


def functions(path: str, text: str) -> list[tuple[str, int]]:
    """``(path:qualified name, lines)`` of every function and method in a file."""
    out: list[tuple[str, int]] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                out.append((f"{path}:{name}", child.end_lineno - child.lineno + 1))
                walk(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")
            else:
                walk(child, prefix)

    walk(ast.parse(text), "")
    return out


def shape(files: dict[str, str]) -> dict:
    lines = {p: len(t.splitlines()) for p, t in files.items()}
    funcs = [f for p, t in files.items() for f in functions(p, t)]
    longest_funcs = sorted(funcs, key=lambda f: (-f[1], f[0]))[:TOP]
    longest_files = sorted(lines.items(), key=lambda f: (-f[1], f[0]))[:TOP]
    return {
        "files": len(lines),
        "lines": sum(lines.values()),
        "files_over_500_lines": sum(n > 500 for n in lines.values()),
        "functions": len(funcs),
        "median_function_lines": statistics.median(n for _, n in funcs) if funcs else 0,
        "functions_over_60_lines": sum(n > 60 for _, n in funcs),
        "longest_files": [{"file": p, "lines": n} for p, n in longest_files],
        "longest_functions": [{"function": f, "lines": n} for f, n in longest_funcs],
        "lines_per_file": dict(sorted(lines.items())),
    }


def duplicate_pairs(repo: Path) -> int | None:
    """Pairs the ``duplicates`` command reports for ``repo`` (None when it is not installed)."""
    exe = shutil.which("duplicates")
    if exe is None:
        return None
    out = subprocess.run(
        [exe, "--repo", str(repo), "--seconds", "120"], capture_output=True, text=True
    ).stdout
    if out.startswith("no duplicates"):
        return 0
    m = re.match(r"(\d+) pairs?", out)
    return int(m.group(1)) if m else None


def duplicate_pairs_at(rev: str) -> int | None:
    with tempfile.TemporaryDirectory(prefix="meiju-shape-") as tmp:
        with tarfile.open(fileobj=BytesIO(_git("archive", rev))) as tar:
            tar.extractall(tmp, filter="data")
        return duplicate_pairs(Path(tmp))


def contracts() -> list[dict[str, str]] | None:
    """The import contracts of pyproject.toml and whether each is kept (None without
    import-linter): one ``lint-imports --contract ID`` run per contract."""
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(exe).exists():
        return None
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    rows = []
    for c in config["tool"]["importlinter"]["contracts"]:
        run = subprocess.run(
            [exe, "--no-cache", "--contract", c["id"]], cwd=ROOT, capture_output=True, text=True
        )
        rows.append(
            {
                "contract": c["name"],
                "status": "KEPT" if run.returncode == 0 else "BROKEN",
                "ignored_imports": len(c.get("ignore_imports", [])),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default=BASE, help="the revision to compare with")
    args = ap.parse_args(argv)
    before, after = shape(sources_at(args.base)), shape(sources_at(None))
    # both sides from `git archive` (the tool counts a git checkout's tracked files and a plain
    # folder's every file differently): "now" is HEAD, so commit before measuring
    if _git("status", "--porcelain", "--", *SOURCES).strip():
        print("note: uncommitted changes to the sources are not in the duplicates count (HEAD)")
    dup_before, dup_after = duplicate_pairs_at(args.base), duplicate_pairs_at("HEAD")
    kept = contracts()

    print(f"{'':32} {'base ' + args.base:>14} {'now':>10}")
    for key in (
        "files",
        "lines",
        "files_over_500_lines",
        "functions",
        "median_function_lines",
        "functions_over_60_lines",
    ):
        print(f"{key:32} {before[key]:>14} {after[key]:>10}")
    print(f"{'duplicates pairs':32} {dup_before!s:>14} {dup_after!s:>10}")
    for label, data in (("base", before), ("now", after)):
        print(f"\n{TOP} longest functions ({label})")
        for row in data["longest_functions"]:
            print(f"  {row['lines']:>5}  {row['function']}")
    if kept is not None:
        print("\nimport contracts")
        for row in kept:
            ignored = f" ({row['ignored_imports']} ignored)" if row["ignored_imports"] else ""
            print(f"  {row['status']:7} {row['contract']}{ignored}")

    top_before = sum(r["lines"] for r in before["longest_functions"])
    top_after = sum(r["lines"] for r in after["longest_functions"])
    n_kept = sum(r["status"] == "KEPT" for r in kept) if kept is not None else None
    summary = [
        {
            "figure": "longest function (lines)",
            "value": f"{after['longest_functions'][0]['lines']} (was {before['longest_functions'][0]['lines']})",
            "goal": "",
            "note": after["longest_functions"][0]["function"],
        },
        {
            "figure": "median function (lines)",
            "value": f"{after['median_function_lines']:g} (was {before['median_function_lines']:g})",
            "goal": "8-11 (style.md)",
            "note": f"{after['functions']} functions in {after['files']} files",
        },
        {
            "figure": "functions over 60 lines",
            "value": f"{after['functions_over_60_lines']} (was {before['functions_over_60_lines']})",
            "goal": "",
            "note": f"the {TOP} longest: {top_after} lines (was {top_before})",
        },
        {
            "figure": "import contracts kept",
            "value": "n/a" if kept is None else f"{n_kept} of {len(kept)}",
            "goal": "all",
            "note": "lint-imports, pyproject.toml [tool.importlinter]",
        },
        {
            "figure": "duplicates pairs",
            "value": f"{dup_after} (was {dup_before})",
            "goal": "",
            "note": "places sharing 6+ lines, whole tree; both revisions counted from `git archive` (the earlier 70 counted a checkout)",
        },
    ]
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(
        json.dumps(
            {
                "base": args.base,
                "before": before,
                "after": after,
                "duplicates_pairs": {"before": dup_before, "after": dup_after},
                "contracts": kept,
                "summary": summary,
            },
            indent=2,
            ensure_ascii=False,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"\nwrote {RESULT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
