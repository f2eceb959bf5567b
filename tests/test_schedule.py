"""The learning-rate schedules as pure functions: (progress, valid cross-entropy) -> decision."""

import pytest

from rnnlm_cli.config import TrainConfig
from rnnlm_cli.schedule import Decision, after_epoch


def tc(**kw):
    return TrainConfig(**kw)


def test_halving_accepts_cuts_then_stops():
    t = tc(schedule="halving", lr_decay=0.5, min_improvement=1.003)
    assert after_epoch(t, 1.0, False, None, 1, 5.0) == Decision(1.0, True, False, False, False)
    assert after_epoch(t, 1.0, False, 5.0, 2, 4.0) == Decision(1.0, True, False, False, False)
    # better, but by less than the factor: accepted, and halving begins with this epoch
    assert after_epoch(t, 1.0, False, 5.0, 3, 4.999) == Decision(0.5, True, False, False, True)
    # once halving, every epoch is cut; a good gain goes on
    assert after_epoch(t, 0.5, True, 5.0, 4, 4.0) == Decision(0.25, True, False, False, True)
    # worse while halving: rejected (the best weights come back), and training stops
    assert after_epoch(t, 0.5, True, 4.0, 5, 4.2) == Decision(0.25, False, True, True, True)


def test_halving_rejects_a_worse_epoch_before_halving_began():
    t = tc(schedule="halving", lr_decay=0.5)
    assert after_epoch(t, 1.0, False, 4.0, 2, 4.5) == Decision(0.5, False, True, False, True)


def test_step_cuts_from_decay_start_and_never_rejects():
    t = tc(schedule="step", lr_decay=0.4, decay_start=3)
    assert after_epoch(t, 1.0, False, None, 1, 5.0) == Decision(1.0, True, False, False, False)
    assert after_epoch(t, 1.0, False, 5.0, 2, 6.0) == Decision(1.0, False, False, False, False)
    assert after_epoch(t, 1.0, False, 5.0, 3, 4.0) == Decision(pytest.approx(0.4), True, False, False, False)
    assert after_epoch(t, 0.4, False, 4.0, 4, 4.5).lr == pytest.approx(0.16)


def test_plateau_cuts_after_an_epoch_that_does_not_improve():
    t = tc(schedule="plateau", lr_decay=0.25)
    assert after_epoch(t, 20.0, False, 5.0, 2, 4.0) == Decision(20.0, True, False, False, False)
    assert after_epoch(t, 20.0, False, 4.0, 3, 4.0) == Decision(5.0, False, False, False, False)


def test_constant_never_changes_the_rate():
    t = tc(schedule="constant")
    for best, ce in ((None, 3.0), (3.0, 2.0), (2.0, 9.0)):
        d = after_epoch(t, 0.7, False, best, 5, ce)
        assert (d.lr, d.reject, d.stop, d.halving) == (0.7, False, False, False)
        assert d.accept == (best is None or ce < best)
