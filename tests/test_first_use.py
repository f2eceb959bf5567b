"""What a new user meets first: key suggestions by meaning, the dry run's checks of the data, the
wording of train's last line and of sample, the help texts, and a README that stands on its own."""

import json
import re
import signal
from pathlib import Path

import pytest
from conftest import assert_clean_error

from rnnlm_cli import train as train_mod
from rnnlm_cli.config import load_config

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------
# unknown keys: other tools' names lead to ours


@pytest.mark.parametrize("given,meant", [
    ("train.learning_rate", "train.lr"), ("train.lr_decay_rate", "train.lr_decay"),
    ("model.hidden_size", "model.hidden_dim"), ("model.emsize", "model.embedding_dim"),
    ("model.nhid", "model.hidden_dim"), ("model.nlayers", "model.layers"), ("model.dropout_rate", "model.dropout"),
    ("train.seq_len", "train.bptt"), ("train.bptt_len", "train.bptt"), ("train.batch", "train.batch_size"),
    ("train.epochs_max", "train.epochs"), ("train.grad_clip", "train.clip_norm"), ("train.clip", "train.clip_norm"),
    ("model.lr", "train.lr"), ("train.dropout", "model.dropout"),  # our key, in the wrong section
    ("model.hiden_dim", "model.hidden_dim"),  # and spelling, as before
])
def test_unknown_keys_suggest_ours_by_meaning(run_cli, given, meant):
    code, _, err = run_cli("config", "--set", f"{given}=1")
    assert_clean_error(code, err, 2, f"--set '{given}=1'", f"did you mean '{meant}'")


def test_unknown_keys_in_a_config_file(tmp_path, run_cli):
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  nhid: 64\n", encoding="utf-8")
    code, _, err = run_cli("train", config, "--dry-run")
    assert_clean_error(code, err, 2, "c.yaml", "model.nhid", "did you mean 'model.hidden_dim'")
    config.write_text("learning_rate: 0.1\n", encoding="utf-8")  # a flat config of another tool
    code, _, err = run_cli("train", config, "--dry-run")
    assert_clean_error(code, err, 2, "unknown section 'learning_rate'", "'train.lr'")


# --------------------------------------------------------------------------------------------
# --dry-run reads the data


def test_dry_run_reads_every_data_file(tiny_config, corpus, run_cli):
    code, out, err = run_cli("train", tiny_config, "--dry-run")
    assert code == 0 and "hidden_dim: 12" in out, err
    lines = err.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("dry run: ") for line in lines), err
    assert f"data.train {corpus['train']}: 2208 words on 300 lines, 2508 targets" in lines[0]
    assert "vocabulary: 29 tokens" in lines[3] and "nothing was written" in lines[3]


@pytest.mark.parametrize("setting,fragment", [
    ("data.train=missing.txt", "missing.txt: no such file"),
    ("data.test=missing.txt", "missing.txt: no such file"),
    ("data.valid=.", "is a directory"),
    ("train.batch_size=5000", "shorter than one window"),
])
def test_dry_run_refuses_missing_or_unreadable_data(tiny_config, run_cli, tmp_path, setting, fragment):
    code, _, err = run_cli("train", tiny_config, "--set", setting, "--dry-run", "--out", tmp_path / "never")
    assert_clean_error(code, err, 2, fragment)
    assert not (tmp_path / "never").exists()


def test_dry_run_refuses_binary_or_empty_data(tiny_config, run_cli, tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"ok\n\x00\x01\x02\n")
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    for name, fragment in (("bin.txt", "NUL byte"), ("empty.txt", "no tokens")):
        code, _, err = run_cli("train", tiny_config, "--set", f"data.valid={tmp_path / name}", "--dry-run")
        assert_clean_error(code, err, 2, name, fragment)


# --------------------------------------------------------------------------------------------
# train's last line


def test_a_run_stopped_by_max_steps_says_the_fraction_of_an_epoch(tiny_config, run_cli, tmp_path):
    code, out, err = run_cli("train", tiny_config, "--set", "train.max_steps=21", "--out", tmp_path / "m", "-q")
    assert code == 0, err
    # 2508 targets in 4 streams of 627 tokens: 626 targets each, 105 windows of 6 (the last 2)
    assert "504 tokens in 0.20 epochs" in out, out
    end = json.loads((tmp_path / "m" / "metrics.jsonl").read_text().splitlines()[-1])
    assert end["epochs"] == 0 and end["epochs_trained"] == pytest.approx(0.2)


def test_a_run_stopped_within_an_epoch_closes_its_bar_before_the_end_line(tiny_config, run_cli, tmp_path,
                                                                         monkeypatch):
    """On a terminal, max_steps stops training inside an epoch, with its bar open: the bar goes
    before anything else is printed, so the `| end |` line is not glued to it."""
    import sys
    import click
    from rnnlm_cli import cli
    events, echo, close = [], click.echo, cli.BarReporter.close
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # the progress bar is on
    monkeypatch.setattr(click, "echo", lambda text="", **k: events.append(("echo", str(text))) or echo(text, **k))
    monkeypatch.setattr(cli.BarReporter, "close", lambda self: events.append(("close", self.bar is not None))
                        or close(self))
    code, out, err = run_cli("train", tiny_config, "--set", "train.max_steps=21", "--out", tmp_path / "m")
    assert code == 0, err
    end = next(k for k, e in enumerate(events) if e[0] == "echo" and e[1].startswith("| end |"))
    assert ("close", True) in events[:end], events  # the open bar was closed before the end line


def test_the_last_line_after_resume_gives_the_total_and_the_resumed_wall_time(tiny_config, run_cli, tmp_path):
    out = tmp_path / "m"
    stops = iter([None] * 150 + [signal.SIGINT])
    with pytest.raises(train_mod.Interrupted):
        train_mod.run(load_config(tiny_config), out, should_stop=lambda: next(stops, None))
    code, stdout, err = run_cli("train", "--out", out, "--resume", "-q")
    assert code == 0, err
    m = re.search(r"\| (\d+\.\ds) in all, (\d+\.\ds) since --resume \|", stdout)
    assert m, stdout
    end = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert end["total_wall_seconds"] > end["wall_seconds"] > 0
    assert m.groups() == (f"{end['total_wall_seconds']:.1f}s", f"{end['wall_seconds']:.1f}s")


# --------------------------------------------------------------------------------------------
# sample, eval and gradcheck


def test_sample_lists_unknown_prompt_words_quoted_once_each(tiny_model, run_cli):
    code, _, err = run_cli("sample", tiny_model[0], "--prompt", "the zebra sees an old zebra yak", "--words", 2)
    assert code == 0
    assert err.strip() == "warning: not in the vocabulary, read as <unk>: 'zebra', 'an', 'yak'", err


def test_sample_no_unk_never_draws_unk(tmp_path, run_cli):
    # a corpus where most words are rare: with min_count 2 they are <unk>, the likeliest token
    words = [f"w{i}" for i in range(400)]
    text = "\n".join(f"the {words[i]} and {words[i + 1]} ." for i in range(0, 400, 2)) + "\n"
    for name in ("train", "valid"):
        (tmp_path / f"{name}.txt").write_text(text, encoding="utf-8")
    config = tmp_path / "c.yaml"
    config.write_text("data: {train: train.txt, valid: valid.txt}\nvocab: {min_count: 2}\n"
                      "model: {embedding_dim: 8, hidden_dim: 8}\ntrain: {batch_size: 4, bptt: 5, epochs: 1}\n",
                      encoding="utf-8")
    assert run_cli("train", config, "--out", tmp_path / "m", "-q")[0] == 0
    code, plain, _ = run_cli("sample", tmp_path / "m", "--words", 200, "--seed", 1)
    assert code == 0 and "<unk>" in plain.split()
    code, no_unk, _ = run_cli("sample", tmp_path / "m", "--words", 200, "--seed", 1, "--no-unk")
    assert code == 0 and "<unk>" not in no_unk.split() and len(no_unk.split()) > 100
    code, greedy, _ = run_cli("sample", tmp_path / "m", "--words", 20, "--temperature", 0, "--no-unk")
    assert code == 0 and "<unk>" not in greedy.split()


def test_eval_batch_size_n_leaves_n_minus_1_plus_the_remainder_unscored(tiny_model, corpus, run_cli):
    """What docs/commands.md says (eval): the file's S tokens are cut into N streams of S // N,
    each of which predicts all but its first token; the last S mod N tokens are not read."""
    model, _ = tiny_model
    code, out, _ = run_cli("eval", model, corpus["test"], "--json")
    targets = json.loads(out)["targets"]
    for n in (2, 3, 7):
        code, out, _ = run_cli("eval", model, corpus["test"], "--batch-size", n, "--json")
        assert code == 0 and json.loads(out)["targets"] == targets - (n - 1) - (targets + 1) % n


def test_gradcheck_help_describes_every_option(run_cli):
    import click
    from rnnlm_cli.cli import gradcheck_cmd
    code, out, _ = run_cli("gradcheck", "--help")
    text = " ".join(out.split())
    options = [p for p in gradcheck_cmd.params if isinstance(p, click.Option)]
    assert code == 0 and len(options) == 9
    for option in options:
        assert option.help and " ".join(option.help.split()) in text, option.opts[0]


# --------------------------------------------------------------------------------------------
# where things go; the README and the docs stand on their own


def _links(path):
    return re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8"))


def _anchors(path):
    """The #anchors GitHub gives a Markdown page's headings (lowercase; punctuation but - and _
    dropped; spaces to -; a repeated heading gets -1, -2, ...)."""
    seen, anchors = {}, set()
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


PAGES = ["README.md", "data/README.md", "benchmarks/README.md", "benchmarks/RESULTS.md",
         *sorted(p.relative_to(REPO).as_posix() for p in REPO.glob("docs/*.md"))]


@pytest.mark.parametrize("page", PAGES)
def test_pages_link_only_to_files_in_the_repository(page):
    """Every relative link of every page resolves, and so does the #anchor it names."""
    path = REPO / page
    for link in _links(path):
        assert not re.match(r"[a-z]+:", link), f"{page} links outside the repository: {link}"
        target, _, anchor = link.partition("#")
        target_path = (path.parent / target) if target else path
        assert target_path.exists(), f"{page}: {link} is not in the repository"
        if anchor and target_path.suffix == ".md":
            assert anchor in _anchors(target_path), f"{page}: {link}: no such heading in {target or page}"


def test_every_page_is_checked():
    assert {p.relative_to(REPO).as_posix() for p in REPO.glob("docs/*.md")} <= set(PAGES)


def test_nothing_shipped_points_outside_the_repository():
    for path in [*REPO.glob("*.md"), *REPO.glob("docs/*.md"), *REPO.glob("data/*.md"), *REPO.glob("configs/*"),
                 *REPO.glob("scripts/*"), *REPO.glob("benchmarks/*.py"), *REPO.glob("benchmarks/*.md")]:
        text = path.read_text(encoding="utf-8")
        for pattern in ("../shared", "/work/", '"shared"', "SPEC", "seeds/"):
            assert pattern not in text, f"{path.relative_to(REPO)} mentions {pattern}"
    for path in [*REPO.glob("rnnlm_cli/**/*.py"), *REPO.glob("tests/*.py")]:
        if path.name == "test_first_use.py":  # the patterns themselves
            continue
        text = path.read_text(encoding="utf-8")
        for pattern in (r"\.\./shared", r"/work/", r"\bSPEC\b", r"seeds/"):
            assert not re.search(pattern, text), f"{path.relative_to(REPO)} mentions {pattern}"


def test_train_help_says_where_the_model_and_the_data_are(run_cli):
    code, out, _ = run_cli("train", "--help")
    text = " ".join(out.split())
    assert code == 0 and "runs/<config name> under the current directory" in text
    assert "relative data paths in CONFIG resolve against CONFIG's own folder" in text
    assert "--init-vocab" in text


def test_readme_setup_uses_a_virtualenv_and_says_where_things_go():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    assert "python3 -m venv" in setup and ". .venv/bin/activate" in setup
    usage = readme.split("## Usage", 1)[1].split("\n## ", 1)[0]
    first_lines = " ".join(usage.split("```")[0].split())
    assert "current directory" in first_lines and "config file's folder" in first_lines


def test_docs_say_what_eval_batch_size_leaves_unscored():
    page = " ".join((REPO / "docs" / "commands.md").read_text(encoding="utf-8").split())
    assert "N − 1 + (S mod N) targets go unscored" in page


def test_readme_explains_its_terms():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for m in re.finditer(r"seeds? 00\d", readme):
        around = readme[max(0, m.start() - 200):m.end() + 200]
        assert "derivation note" in around, f"'{m.group(0)}' is not explained near {around!r}"
    assert "key pattern" not in readme


def test_the_kjv_source_is_described_and_fetched_by_a_shipped_script():
    data_readme = (REPO / "data" / "README.md").read_text(encoding="utf-8")
    assert "scripts/get_kjv.sh" in data_readme and (REPO / "scripts" / "get_kjv.sh").is_file()
    script = (REPO / "scripts" / "get_kjv.sh").read_text(encoding="utf-8")
    for checksum in re.findall(r"sha256\s+`?([0-9a-f]{64})", data_readme)[:3]:
        assert checksum in script or checksum in (REPO / "scripts" / "prepare_kjv.py").read_text()


def test_the_figures_script_knows_the_results_rows():
    import importlib.util
    spec = importlib.util.spec_from_file_location("readme_figures", REPO / "scripts" / "readme_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    for run in module.RUNS:
        assert len(re.findall(module.row_pattern(run), results, re.M)) == 1, run["label"]
