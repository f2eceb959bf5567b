"""Write a synthetic corpus: Zipf-distributed words (w0, w1, ...), lines of 5 to 40 words.

    python benchmarks/make_corpus.py OUT.txt --tokens 20000000 [--vocab 100000] [--seed 1]

Used by benchmarks/large_corpus.py (peak memory and start-up time against corpus size) and the
tests' large-vocabulary corpus; never committed (100M tokens are about 700 MB of text).
"""

import argparse

import numpy as np


def write_corpus(path, tokens, vocab=100_000, seed=1, zipf=1.1, block=1_000_000):
    """`tokens` words (and about tokens / 22 lines) drawn from a Zipf law over `vocab` words,
    every word appearing at least once when tokens >= vocab (the first `vocab` draws are a
    permutation of all words), written in blocks of `block` words."""
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}".encode() for i in range(vocab)], dtype=object)
    p = 1.0 / np.arange(1, vocab + 1) ** zipf
    p /= p.sum()
    written = 0
    with open(path, "wb") as f:
        while written < tokens:
            n = min(block, tokens - written)
            ids = rng.choice(vocab, size=n, p=p)
            if written == 0 and tokens >= vocab:
                ids[:vocab] = rng.permutation(vocab)
            lengths = rng.integers(5, 41, size=n // 5 + 2)
            ends = np.cumsum(lengths)
            ends = ends[ends < n]
            seps = np.full(n, b" ", dtype=object)
            seps[ends - 1] = b"\n"
            seps[-1] = b"\n"
            out = np.empty(2 * n, dtype=object)
            out[0::2], out[1::2] = words[ids], seps
            f.write(b"".join(out))
            written += n
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--tokens", type=int, required=True)
    ap.add_argument("--vocab", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    write_corpus(args.out, args.tokens, args.vocab, args.seed)


if __name__ == "__main__":
    main()
