"""Rewrite the config table in docs/training.md ("Config reference") from
`rnnlm_cli.config.describe_keys()`, the table `rnnlm config --keys` prints. Run it after adding or
changing a config key; tests/test_cli.py::test_config_reference_is_current fails until then."""

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's rnnlm_cli, installed or not

from rnnlm_cli.config import describe_keys  # noqa: E402

page = REPO / "docs" / "training.md"
text = page.read_text(encoding="utf-8")
table = re.compile(r"^\| key \| default \| meaning \|\n(?:\|.*\n)+", re.M)
assert table.search(text), "no config table in docs/training.md"
page.write_text(table.sub(lambda _: describe_keys() + "\n", text, count=1), encoding="utf-8")
print("docs/training.md config table updated")
