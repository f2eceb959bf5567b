"""The training state: snapshot independence, save/load round trip, which weights are kept, and
checkpoints written by rnnlm before the explicit stop/keep fields."""

import json

import numpy as np
import pytest
from conftest import assert_same_arrays, weights

from rnnlm_cli import model
from rnnlm_cli import train as train_mod
from rnnlm_cli.checkpoint import KEEP_BEST, KEEP_LAST, STOP_MAX_STEPS, STOP_SCHEDULE, TrainingState
from rnnlm_cli.config import load_config
from rnnlm_cli.errors import UserError


def _state(tiny_config, *overrides):
    config = load_config(tiny_config, ["train.optimizer=adam", "train.lr=0.01", *overrides])
    params = model.init_params(config.model, 29, seed=3)
    return config, TrainingState.new(config, params)


def test_a_snapshot_does_not_change_with_the_state(tiny_config):
    _, state = _state(tiny_config)
    snap = state.snapshot()
    expected_draws = snap.snapshot().rng.random(5)
    before = {k: v.copy() for k, v in state.params.items()}
    for array in (*state.params.values(), *state.opt_state.values(), state.hidden):
        array += 1
    state.progress.step, state.progress.lr = 99, 7.0
    state.rng.random(100)
    assert_same_arrays(snap.params, before)
    assert int(snap.opt_state["adam.t"]) == 0 and not snap.hidden.any()
    assert (snap.progress.step, snap.progress.lr) == (0, 0.01)
    assert np.array_equal(snap.rng.random(5), expected_draws)  # the generator is where it was


def test_save_load_round_trip(tiny_config, tmp_path):
    config, state = _state(tiny_config)
    state.best = {k: v * 2 for k, v in state.params.items()}
    state.hidden[...] = 0.25
    state.progress.step, state.progress.keep, state.progress.best_ce = 12, KEEP_BEST, 3.5
    state.rng.random(3)
    state.save(tmp_path)
    loaded = TrainingState.load(tmp_path, config, 29)
    assert_same_arrays(loaded.params, state.params)
    assert_same_arrays(loaded.best, state.best)
    assert_same_arrays(loaded.opt_state, state.opt_state)
    assert np.array_equal(loaded.hidden, state.hidden)
    assert loaded.progress == state.progress
    assert np.array_equal(loaded.rng.random(4), state.rng.random(4))


def test_kept_weights_follow_progress_keep(tiny_config):
    _, state = _state(tiny_config)
    assert state.kept() is state.params  # nothing validated yet
    state.best = {k: v.copy() for k, v in state.params.items()}
    state.progress.keep = KEEP_BEST
    assert state.kept() is state.best
    state.progress.keep = KEEP_LAST
    assert state.kept() is state.params


def _rewrite_meta(path, change):
    arrays = weights(path.parent, path.name)
    meta = json.loads(str(arrays["meta"]))
    change(meta)
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)


@pytest.mark.parametrize("done, reason, stop", [(False, "", None), (True, "reached max_steps 5", STOP_MAX_STEPS),
                                                (True, "valid perplexity stopped improving", STOP_SCHEDULE)])
def test_a_checkpoint_of_the_previous_layout_is_read(tiny_config, tmp_path, done, reason, stop):
    out = tmp_path / "run"
    config = load_config(tiny_config, ["train.max_steps=5"])
    train_mod.run(config, out)

    def old_layout(meta):
        progress = meta["progress"]
        for name in ("stop", "keep", "last_loss"):
            progress.pop(name)
        progress.update(done=done, stop_reason=reason)
    _rewrite_meta(out / "checkpoint.npz", old_layout)
    state = TrainingState.load(out, config, 29)
    assert state.progress.stop == stop and state.progress.keep == KEEP_LAST  # no best saved: keep the last


def test_a_damaged_stop_or_keep_is_refused(tiny_config, tmp_path):
    out = tmp_path / "run"
    config = load_config(tiny_config, ["train.max_steps=5"])
    train_mod.run(config, out)
    _rewrite_meta(out / "checkpoint.npz", lambda m: m["progress"].update(keep="everything"))
    with pytest.raises(UserError, match="corrupted checkpoint"):
        TrainingState.load(out, config, 29)
