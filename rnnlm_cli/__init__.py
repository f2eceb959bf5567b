"""rnnlm: word-level recurrent language models in plain numpy with hand-derived BPTT."""

__version__ = "0.1.0"
