"""Numbers as people read them, alike in every command's output and in the model card:
counts (2.27M), durations (1m18.6s), perplexities (35.40, n/a)."""


def count(n):
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def seconds(s):
    return f"{int(s // 60)}m{s % 60:04.1f}s" if s >= 60 else f"{s:.1f}s"


def ppl(x):
    return "n/a" if x is None else f"{x:.2f}" if x < 1e7 else f"{x:.3g}"
