#!/usr/bin/env python3
"""Make the shipped default corpus, data/{train,valid,test}.txt, from the King James Bible.

Input: kjv.txt as described in data/README.md (one verse per line, `Ge1:1 In the beginning
God created the heaven and the earth.`), which scripts/get_kjv.sh makes from two Debian packages. Output: the first BOOKS books (default 6: Genesis to
Joshua, about 1 MB), one verse per line, the reference dropped, tokenized with rnnlm's own
`simple` tokenizer (lowercase; punctuation split off words; apostrophes and hyphens inside a
word kept: `lord's`, `god-ward`; a trailing possessive apostrophe is punctuation:
`fathers'` -> `fathers '`) and joined with single spaces. So `whitespace` on these files
gives exactly what `simple` gives on the verse text.

Split by chapter, so each part covers every book: chapters are numbered 1, 2, 3, ... in
order across the books; number % 20 == 10 goes to valid, == 0 to test, the rest to train
(about 90/5/5). Deterministic: same input, same bytes out.

Usage (from the repository root):

    python scripts/prepare_kjv.py [KJV] [--out DIR] [--books N]

It prints a Markdown table of the counts for data/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from rnnlm_cli.data import tokenize  # noqa: E402

DEFAULT_KJV = REPO / "build" / "kjv" / "kjv.txt"  # where scripts/get_kjv.sh writes it (not shipped)
KJV_SHA256 = "cd45f0c9cedab8e4439bd6486c8952c77cc8b0ecc5d1f6ae3513f2039f47229d"
SPLITS = ("train", "valid", "test")
# Book abbreviations may start with a digit (1Sm, 2Ki), then letters; chapter:verse follows.
REFERENCE = re.compile(r"(\d?[A-Za-z]+)(\d+):(\d+) (.*)")


def split_of(chapter_number: int) -> str:
    """train/valid/test for the 1-based running chapter number."""
    if chapter_number % 20 == 10:
        return "valid"
    if chapter_number % 20 == 0:
        return "test"
    return "train"


def verses(kjv: Path):
    """Yield (book, chapter, verse text) for each line of kjv.txt, in order."""
    with kjv.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            m = REFERENCE.fullmatch(line.rstrip("\n"))
            if not m:
                sys.exit(f"{kjv}: line {lineno}: not `<Book><chapter>:<verse> <text>`")
            yield m.group(1), int(m.group(2)), m.group(4)


def prepare(kjv: Path, books: int) -> dict[str, list[str]]:
    """The tokenized verse lines of the first `books` books, by split."""
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    seen_books: list[str] = []
    chapter_key, chapter_number = None, 0
    for book, chapter, text in verses(kjv):
        if book not in seen_books:
            if len(seen_books) == books:
                break
            seen_books.append(book)
        if (book, chapter) != chapter_key:
            chapter_key, chapter_number = (book, chapter), chapter_number + 1
        words = tokenize(text, "simple")
        # The shipped text must be a fixed point of the tokenizer (see the module docstring).
        assert tokenize(" ".join(words), "simple") == words, text
        out[split_of(chapter_number)].append(" ".join(words))
    print(f"{len(seen_books)} books ({', '.join(seen_books)}), {chapter_number} chapters")
    return out


def write(out_dir: Path, parts: dict[str, list[str]]) -> None:
    """Write the parts (LF endings, final newline) and print their counts as Markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    print("| file | lines | words | bytes | types |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for split in SPLITS:
        text = "".join(line + "\n" for line in parts[split])
        data = text.encode("utf-8")
        (out_dir / f"{split}.txt").write_bytes(data)
        words = text.split()
        print(
            f"| data/{split}.txt | {len(parts[split]):,} | {len(words):,}"
            f" | {len(data):,} | {len(set(words)):,} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kjv", nargs="?", type=Path, default=DEFAULT_KJV, help="kjv.txt")
    parser.add_argument("--out", type=Path, default=REPO / "data", help="output folder")
    parser.add_argument("--books", type=int, default=6, help="number of books, from Genesis")
    args = parser.parse_args()
    if not args.kjv.is_file():
        sys.exit(f"{args.kjv}: no such file (scripts/get_kjv.sh makes it: see data/README.md)")
    if hashlib.sha256(args.kjv.read_bytes()).hexdigest() != KJV_SHA256:
        print(f"note: {args.kjv} is not the kjv.txt these data files were made from",
              file=sys.stderr)
    write(args.out, prepare(args.kjv, args.books))


if __name__ == "__main__":
    main()
