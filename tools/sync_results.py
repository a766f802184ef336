"""Copies a run's results tables into the docs, so no figure is retyped (make docs-results).

A results table in README.md or docs/*.md sits between two markers naming the file a
run wrote, relative to the run's results folder:

    <!-- results: test_controller.md -->
    | policy | success | ... |
    <!-- /results -->

`python tools/sync_results.py --run-dir data` copies each named file from
`<run-dir>/results/` to `docs/results/` (the repository's copy, with the run's JSON
beside it where there is one) and puts its text between the markers, in every page that
names it; `docs/results/SOURCE.md` records where they came from: the run folder, the
commit checked out when they were copied, the date, and the run's wall times
(`.agent/times.txt`). `--check` changes nothing and exits 1, naming the block, if a
page's table differs from its copy in docs/results/ (the test suite runs it).

Files not named by any marker are not copied; a marker naming a file the run lacks is an
error (one line, nothing written).

A second recipe's tables carry a prefix, `<!-- results: paper/test_controller.md -->`:
`--run-dir data/paper --prefix paper` (make docs-results-paper) fills only the blocks
named `paper/...`, from `data/paper/results/`, into `docs/results/paper/` (its own
SOURCE.md beside them), and a plain run leaves them alone.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COPIES = os.path.join(ROOT, "docs", "results")
BLOCK = re.compile(
    r"(<!-- results: (?P<name>[\w.\-/]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.DOTALL
)


def pages(root: str = ROOT) -> list[str]:
    """README.md and the docs' pages (not docs/results/, the copies)."""
    out = [os.path.join(root, "README.md")]
    docs = os.path.join(root, "docs")
    out += sorted(os.path.join(docs, f) for f in os.listdir(docs) if f.endswith(".md"))
    return [p for p in out if os.path.exists(p)]


def blocks(text: str) -> list[tuple[str, str]]:
    """(file name, the text between its markers) of every results block in `text`."""
    return [(m["name"], m["body"]) for m in BLOCK.finditer(text)]


def filled(text: str, tables: dict) -> str:
    """`text` with each block named in `tables` given its file's text (others unchanged)."""

    def put(m):
        if m["name"] not in tables:
            return m.group(0)
        body = tables[m["name"]].rstrip("\n") + "\n"
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(put, text)


def check(root: str = ROOT) -> list[str]:
    """The blocks whose text differs from docs/results/<name> (or whose copy is
    missing), as 'page: name' strings."""
    wrong = []
    for page in pages(root):
        with open(page) as f:
            for name, body in blocks(f.read()):
                copy = os.path.join(root, "docs", "results", name)
                if not os.path.exists(copy):
                    wrong.append(f"{os.path.relpath(page, root)}: {name} (no docs/results/{name})")
                    continue
                with open(copy) as g:
                    if g.read().rstrip("\n") + "\n" != body:
                        wrong.append(f"{os.path.relpath(page, root)}: {name}")
    return wrong


def sync(run_dir: str, root: str = ROOT, prefix: str = "") -> list[str]:
    """Copies the named tables from `run_dir` and fills the pages' blocks; returns the
    names copied. With `prefix`, only the blocks named `<prefix>/...`. Raises
    FileNotFoundError (nothing written) if the run lacks one."""
    texts = {}
    for page in pages(root):
        with open(page) as f:
            texts[page] = f.read()
    lead = f"{prefix}/" if prefix else ""
    names = sorted(
        name
        for name in {name for text in texts.values() for name, _ in blocks(text)}
        if (name.startswith(lead) if prefix else "/" not in name)
    )
    results = os.path.join(run_dir, "results")
    files = {name: name[len(lead) :] for name in names}  # the block's name in the run
    missing = [f for f in files.values() if not os.path.exists(os.path.join(results, f))]
    if missing:
        raise FileNotFoundError(f"{results} has no {', '.join(missing)}")
    tables = {}
    copies = os.path.join(root, "docs", "results", prefix)
    os.makedirs(copies, exist_ok=True)
    for name, file in files.items():
        src = os.path.join(results, file)
        with open(src) as f:
            tables[name] = f.read()
        shutil.copyfile(src, os.path.join(copies, os.path.basename(src)))
        stem = os.path.splitext(src)[0] + ".json"
        if os.path.exists(stem):
            shutil.copyfile(stem, os.path.join(copies, os.path.basename(stem)))
    for page, text in texts.items():
        new = filled(text, tables)
        if new != text:
            with open(page, "w") as f:
                f.write(new)
    write_source(run_dir, names, copies, prefix)
    return names


def write_source(run_dir: str, names: list[str], copies: str, prefix: str = "") -> None:
    """SOURCE.md beside the copies: where they came from."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
            check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    lines = [
        "# Where these tables come from",
        "",
        (
            f"Copied by `python tools/sync_results.py --run-dir {run_dir}"
            + (f" --prefix {prefix}" if prefix else "")
            + "` on "
            f"{datetime.date.today().isoformat()}, with commit {commit} checked out, from "
            f"`{run_dir}/results/`: {', '.join(f'`{n}`' for n in names)}."
        ),
    ]
    recipe = "paper" if prefix == "paper" else "agent"  # the Makefile target that ran
    stamps = f".{recipe}"
    times = os.path.join(run_dir, stamps, "times.txt")
    if os.path.exists(times):
        with open(times) as f:
            steps = [line.strip() for line in f if line.strip()]
        lines += ["", f"The run's wall time per `make {recipe}` step (`{stamps}/times.txt`):", ""]
        lines += [f"- {step}" for step in steps]
    with open(os.path.join(copies, "SOURCE.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", default="data", help="the run's data folder (make agent's)")
    p.add_argument(
        "--prefix",
        default="",
        help="fill only the blocks named <prefix>/FILE, from this run (e.g. paper, with "
        "--run-dir data/paper); default: the blocks without a prefix",
    )
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a page differs")
    args = p.parse_args(argv)
    if args.check:
        wrong = check()
        if wrong:
            print("results tables differ from docs/results/: " + "; ".join(wrong), file=sys.stderr)
            raise SystemExit(1)
        print("every results table matches docs/results/")
        return
    try:
        names = sync(args.run_dir, prefix=args.prefix)
    except FileNotFoundError as e:
        p.exit(2, f"{p.prog}: error: {e} — run make agent (or pass its --run-dir)\n")
    print(f"copied {', '.join(names)} from {args.run_dir}/results into docs/results/ and the pages")


if __name__ == "__main__":
    main()
