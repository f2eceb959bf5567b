"""rnnlm: word-level recurrent language models in plain numpy with hand-derived BPTT.

The Python API (rnnlm_cli/api.py): `rnnlm_cli.load(MODEL_DIR)` -> a LanguageModel with
`.score(sentences)`, `.evaluate(path)` and `.sample(...)`, giving the numbers the commands print.
"""

__version__ = "0.1.0"
__all__ = ["load", "LanguageModel", "__version__"]


def __getattr__(name):
    # the API is imported on first use, so that `import rnnlm_cli` (and `rnnlm --help`) stay light
    if name in ("load", "LanguageModel"):
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'rnnlm_cli' has no attribute {name!r}")
