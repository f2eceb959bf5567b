#!/usr/bin/env python3
"""Local check (not a test): the token counts of Penn Treebank match the published ones.

Needs a copy of Mikolov's Penn Treebank files: their folder as the argument (default: data/ptb
of this repository, where docs/results.md, "Penn Treebank", suggests putting them; not shipped). Asserts the target counts (words + lines,
docs/model-directory.md) of train/valid/test and a 10,000-word vocabulary from
train (9,999 types incl. <unk>, + <eos>), and prints the encode time and peak RSS.

    python scripts/check_ptb_counts.py [PTB_DIR]
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from rnnlm_cli.data import batchify, count_words, encode_file, num_windows  # noqa: E402
from rnnlm_cli.vocab import build_vocab  # noqa: E402

# (words, non-empty lines) as published; targets = words + lines.
EXPECTED = {
    "train": (887_521, 42_068),
    "valid": (70_390, 3_370),
    "test": (78_669, 3_761),
}


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux, B on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def main() -> None:
    ptb = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "data" / "ptb"
    print(f"peak RSS after imports: {peak_rss_mb():.1f} MB")

    t0 = time.perf_counter()
    counts, words, lines = count_words(ptb / "ptb.train.txt", "whitespace")
    vocab = build_vocab(counts)
    print(f"vocabulary from train: {len(vocab):,} ({time.perf_counter() - t0:.2f} s to count)")
    assert len(vocab) == 10_000, len(vocab)
    assert (words, lines) == EXPECTED["train"], (words, lines)

    for split, (w, l) in EXPECTED.items():
        t0 = time.perf_counter()
        ids, stats = encode_file(ptb / f"ptb.{split}.txt", vocab, "whitespace")
        seconds = time.perf_counter() - t0
        print(
            f"{split:5s}: targets {stats['targets']:,} = {stats['words']:,} words"
            f" + {stats['lines']:,} lines, oov {stats['oov']}, encode {seconds:.2f} s"
        )
        assert (stats["words"], stats["lines"]) == (w, l), stats
        assert stats["targets"] == w + l == len(ids) - 1
        assert stats["oov"] == 0  # every PTB word, <unk> included, is in the train vocabulary
    streams = batchify(ids, 20)
    print(f"test as 20 streams: {streams.shape}, {num_windows(streams, 35)} windows of 35")
    print(f"peak RSS: {peak_rss_mb():.1f} MB")
    print("OK")


if __name__ == "__main__":
    main()
