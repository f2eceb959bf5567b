"""The README and docs/ as a new user meets them: the set-up lines CI runs, the commands marked
runnable (a fence written ```sh runnable) actually run, the README's config is the shipped
template, and its results are the ones docs/results.md records."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
SETUP = ("python3 -m venv .venv && . .venv/bin/activate && pip install -e . && rnnlm train\n"
         "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test,mpi]' && python -m pytest\n")
RUNNABLE = re.compile(r"^```sh runnable\n(.*?)^```", re.M | re.S)


def _pages():
    return [README, *sorted((REPO / "docs").glob("*.md"))]


# --------------------------------------------------------------------------------------------
# the set-up lines


def test_readme_starts_with_the_two_setup_commands():
    """The first command block of the README is the two set-up lines, byte for byte, before any
    other command; .ci/run runs the second verbatim."""
    readme = README.read_text(encoding="utf-8")
    first = re.search(r"^```(\w*)[^\n]*\n(.*?)^```", readme, re.M | re.S)
    assert first.group(1) == "sh" and first.group(2) == SETUP
    assert SETUP.splitlines()[1] in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()


# --------------------------------------------------------------------------------------------
# commands marked runnable


def _shortened(line):
    """A runnable line as the test runs it: training cut to 3 steps and quiet."""
    return re.sub(r"\brnnlm train\b", "rnnlm train --set train.max_steps=3 -q", line)


def _script(blocks, plot_ok):
    lines = ["set -e", 'rnnlm() { "$RNNLM_PYTHON" -m rnnlm_cli.cli "$@"; }']
    for block in blocks:
        for line in block.splitlines():
            if "rnnlm plot" in line and not plot_ok:
                continue  # matplotlib is an optional extra
            lines.append(_shortened(line))
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("page", [p.relative_to(REPO).as_posix() for p in _pages()
                                  if RUNNABLE.search(p.read_text(encoding="utf-8"))])
def test_runnable_commands_run(page, tmp_path):
    """Each page's runnable blocks, in order, in a fresh folder beside configs/ and data/ (as in
    the repository), every `rnnlm train` cut to 3 steps: they exit 0."""
    blocks = RUNNABLE.findall((REPO / page).read_text(encoding="utf-8"))
    for name in ("configs", "data"):
        (tmp_path / name).symlink_to(REPO / name)
    plot_ok = importlib.util.find_spec("matplotlib") is not None
    env = {**os.environ, "RNNLM_PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    done = subprocess.run(["bash", "-c", _script(blocks, plot_ok)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"{page}: a runnable command failed:\n{done.stderr[-3000:]}"


def test_readme_has_runnable_blocks_for_the_tour_and_the_walkthrough():
    blocks = RUNNABLE.findall(README.read_text(encoding="utf-8"))
    commands = " ".join(blocks)
    for command in ("rnnlm train", "rnnlm eval", "rnnlm sample", "rnnlm score", "rnnlm plot", "own-lstm.yaml"):
        assert command in commands, command


# --------------------------------------------------------------------------------------------
# the README's config and results


def test_readme_config_is_the_own_lstm_template():
    readme = README.read_text(encoding="utf-8")
    shown = yaml.safe_load(re.search(r"^```yaml\n(.*?)^```", readme, re.M | re.S).group(1))
    assert shown == yaml.safe_load((REPO / "configs" / "own-lstm.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", ["own-lstm.yaml", "own-elman.yaml"])
def test_templates_are_valid_configs_for_raw_text(name):
    from rnnlm_cli.config import load_config
    config = load_config(REPO / "configs" / name)
    assert config.data.tokenizer == "simple" and Path(config.data.train).name == "train.txt"
    assert config.auto == {"train.lr": f"{config.model.cell}, sgd", "train.clip_norm": f"{config.model.cell}, sgd"}


def test_readme_results_are_those_of_docs_results():
    """Every perplexity of the README's results table is in docs/results.md."""
    readme = README.read_text(encoding="utf-8")
    table = readme.split("## Results", 1)[1].split("\n## ", 1)[0]
    results = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    figures = re.findall(r"\| (\d+\.\d\d) ", table)
    assert len(figures) >= 10
    for figure in figures:
        assert figure in results, figure


# --------------------------------------------------------------------------------------------
# the derivations the code cites


def test_every_seed_cited_is_named_in_derivation_md():
    """A "seed 00N" in the code, the tests or the docs resolves to derivation.md's section of that
    label, which names the public write-up by author or publisher and title."""
    derivation = (REPO / "docs" / "derivation.md").read_text(encoding="utf-8")
    cited = set()
    for path in [*REPO.glob("rnnlm_cli/**/*.py"), *REPO.glob("tests/*.py"), *REPO.glob("docs/*.md")]:
        cited |= set(re.findall(r"[Ss]eeds? (00\d)", path.read_text(encoding="utf-8")))
    assert cited and cited <= {f"00{i}" for i in range(5)}
    for label in sorted(cited):
        section = derivation.split(f"### Seed {label}\n", 1)[1].split("\n### ", 1)[0]
        first = section.strip().split("\n\n", 1)[0]
        assert re.search(r'"[^"]+"', first), f"seed {label}: no title in {first[:200]!r}"
        assert f"| seed {label} |" in derivation, f"seed {label} is missing from the table of sources"
