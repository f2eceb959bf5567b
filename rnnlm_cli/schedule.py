"""Learning-rate schedules: what happens after an epoch, as a pure function of the training
progress and the epoch's valid cross-entropy.

- `halving` (Mikolov's RNNLM toolkit): an epoch that makes valid cross-entropy worse is
  rejected (the best weights come back). Once an epoch improves it by less than the factor
  `min_improvement` (on the log-likelihood), the rate is cut (× lr_decay) after this and every
  later epoch; the next such epoch ends training.
- `step` (Zaremba et al.): × lr_decay after every epoch from `decay_start` on.
- `plateau` (pytorch/examples): × lr_decay after an epoch that does not improve valid perplexity.
- `constant`: the rate never changes.

With every schedule, an epoch whose valid cross-entropy is the best so far is accepted: its
weights become the kept model.
"""

from typing import NamedTuple


class Decision(NamedTuple):
    lr: float  # the learning rate of the next epoch
    accept: bool  # the best valid figure so far: these weights become the kept model
    reject: bool  # go back to the best weights (halving rejects an epoch that made valid worse)
    stop: bool  # training ends after this epoch
    halving: bool  # halving: from now on the rate is cut after every epoch


def after_epoch(train_cfg, lr, halving, best_ce, epoch, valid_ce):
    """The decision after epoch `epoch` (1-based) whose valid cross-entropy is `valid_ce`, given
    the rate `lr` it ran at, whether halving has begun, and the best cross-entropy before it
    (None: this was the first validation)."""
    tc, name = train_cfg, train_cfg.schedule
    accept = best_ce is None or valid_ce < best_ce
    stop = False
    if name == "halving" and best_ce is not None and valid_ce * tc.min_improvement > best_ce:
        stop = halving  # a second epoch of too little gain ends training
        halving = True
    cut = ((name == "halving" and halving) or (name == "step" and epoch >= tc.decay_start)
           or (name == "plateau" and not accept))
    return Decision(lr * tc.lr_decay if cut else lr, accept, name == "halving" and not accept, stop, halving)
