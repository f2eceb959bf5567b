"""The model card (DIR/README.md): its figures are the run's, and the command it gives trains
the same weights again, also after a --resume that changed the length of the run and from an
--init model; a failure to write it leaves a run that --resume finishes."""

import json
import re
import shlex
from pathlib import Path

from conftest import assert_same_arrays, interrupted_run, weights

from rnnlm_cli import modeldir
from rnnlm_cli.errors import WriteError


def events(model_dir):
    return [json.loads(line) for line in (Path(model_dir) / "metrics.jsonl").read_text().splitlines()]


def card(model_dir):
    return (Path(model_dir) / "README.md").read_text(encoding="utf-8")


def reproduce(run_cli, model_dir, new_dir):
    """Run the card's `rnnlm train ...` line with NEW_DIR replaced -> the new run's weights."""
    line = next(line for line in card(model_dir).splitlines() if line.startswith("rnnlm train "))
    args = shlex.split(line.replace("NEW_DIR", str(new_dir)))[1:]
    code, _, err = run_cli(*args, "-q")
    assert code == 0, err
    return weights(new_dir)


def test_the_card_holds_the_figures_of_the_run(run_dirs):
    out = run_dirs[0]["complete"]
    text, end = card(out), events(out)[-1]
    arrays = weights(out)
    for fragment in (f"# Model card: {out.name}", "training complete (reached 4 epochs)",
                     f"| valid | {end['valid_ppl']:.2f} |", f"| test | {end['test_ppl']:.2f} |",
                     f"| unigram baseline (valid) | {end['unigram_valid_ppl']:.2f} |",
                     f"{sum(a.size for a in arrays.values()):,} trained parameters", "| `rnn.0.W_h` | 12 × 12 | 144 |",
                     f"Vocabulary: {len((out / 'vocab.txt').read_text().splitlines())} tokens",
                     f"{end['steps']:,} steps", "elman (tanh), 1 layer, E 8, H 12", "step schedule",
                     f"| train | `{run_dirs[1].parent / 'train.txt'}` |"):
        assert fragment in text, (fragment, text)
    rows = [line for line in text.splitlines() if re.match(r"\| \d+ \| ", line)]
    epochs = [e for e in events(out) if e["event"] == "epoch"]
    assert [int(r.split("|")[1]) for r in rows] == [e["epoch"] for e in epochs]
    assert [r.split("|")[3].strip() for r in rows] == [f"{e['valid_ppl']:.2f}" for e in epochs]
    assert [r.split("|")[4].strip() for r in rows] == [f"{e['lr']:g}" for e in epochs] == ["1", "1", "0.5", "0.25"]


def test_the_cards_command_trains_the_same_weights(run_dirs, tmp_path, run_cli):
    out = run_dirs[0]["complete"]
    assert f"rnnlm train {out.resolve()}/config.yaml --out NEW_DIR\n" in card(out)
    assert_same_arrays(weights(out), reproduce(run_cli, out, tmp_path / "again"))


def test_after_a_resume_that_changed_the_epochs_the_command_says_so(tiny_config, tmp_path, run_cli):
    out = tmp_path / "cut"
    interrupted_run(tiny_config, out, overrides=("train.epochs=2",), at_call=50)
    code, _, err = run_cli("train", "--out", out, "--resume", "--set", "train.epochs=3", "-q")
    assert code == 0, err
    assert "--set train.epochs=3" in card(out) and "reached 3 epochs" in card(out)
    assert_same_arrays(weights(out), reproduce(run_cli, out, tmp_path / "again"))


def test_a_run_from_an_init_model_says_so_and_its_command_too(run_dirs, tiny_config, tmp_path, run_cli):
    base = run_dirs[0]["complete"]
    out = tmp_path / "tuned"
    code, _, err = run_cli("train", tiny_config, "--init", base, "--out", out, "--set", "train.lr=0.5", "-q")
    assert code == 0, err
    assert f"started from the model in `{base.resolve()}`" in card(out) and f"--init {base.resolve()}" in card(out)
    assert_same_arrays(weights(out), reproduce(run_cli, out, tmp_path / "again"))


def test_a_diverged_run_gets_a_card_that_says_so(run_dirs):
    out = run_dirs[0]["diverged"]
    info = json.loads((out / "info.json").read_text())
    text = card(out)
    assert "training diverged at step" in text and "after 3 rollbacks" in text
    assert f"holds the model of step {info['step']}" in text and "Perplexity of the kept model" not in text


def test_a_card_that_cannot_be_written_leaves_a_run_that_resume_finishes(tiny_config, tmp_path, run_cli, monkeypatch):
    out = tmp_path / "run"
    real = modeldir.write_card

    def full_disk(out_dir, text):
        raise WriteError(f"{out_dir}/README.md: could not write (No space left on device); nothing was written")
    monkeypatch.setattr(modeldir, "write_card", full_disk)
    code, _, err = run_cli("train", tiny_config, "--out", out, "-q")
    assert code == 1 and "README.md" in err and "--resume" in err, err
    assert not (out / "README.md").exists() and json.loads((out / "info.json").read_text())["status"] == "training"
    assert [e["event"] for e in events(out)].count("end") == 0
    monkeypatch.setattr(modeldir, "write_card", real)
    code, _, err = run_cli("train", "--out", out, "--resume", "-q")
    assert code == 0, err
    assert (out / "README.md").exists() and json.loads((out / "info.json").read_text())["status"] == "complete"
    assert [e["event"] for e in events(out)].count("end") == 1
