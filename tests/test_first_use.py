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


