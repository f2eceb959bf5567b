"""Rewrite the config table in README.md from `rnnlm_cli.config.describe_keys()`."""

import re
from pathlib import Path

from rnnlm_cli.config import describe_keys

readme = Path(__file__).resolve().parent.parent / "README.md"
text = readme.read_text(encoding="utf-8")
table = re.compile(r"^\| key \| default \| meaning \|\n(?:\|.*\n)+", re.M)
assert table.search(text), "no config table in README.md"
readme.write_text(table.sub(lambda _: describe_keys() + "\n", text, count=1), encoding="utf-8")
print("README.md config table updated")
