"""Weight averaging (`train.average`, docs/regularization.md): Polyak averaging of the weights after each
update, as in the averaged SGD of Merity et al.'s NT-ASGD (AWD-LSTM).

From the start of epoch N (`train.average: N`), or of the epoch after the one whose validation
triggers it (`auto`: its valid perplexity is not below the best of the epochs before the last
`train.nonmono`, Merity et al.'s non-monotone trigger), the run keeps beside the weights θ it
trains their running mean

    θ̄_k = θ̄_{k−1} + (θ_k − θ̄_{k−1}) / k,    k = 1, 2, ... the updates since averaging began,

so θ̄_1 = θ_1, the weights after the first averaged update. Validation, the best weights kept in
weights.npz and the final evaluation use θ̄; training goes on from θ. The average and its count
are in the checkpoint (`--resume` is bit-exact), and every process of a data-parallel run holds
the same θ, hence the same θ̄.

With the schedules: the learning rate goes on changing as the schedule says (`constant` is
NT-ASGD's choice: averaging does the annealing). An epoch the schedule rejects (`halving`)
brings back the best weights, which are an average: the run goes on from them, its raw weights
and its average both set to them (the average restarts, counting them once). A rollback after
a divergence restores the average with everything else.
"""

import numpy as np

from . import parallel


def from_epoch(train_cfg, progress):
    """The epoch averaging starts at: train.average as a number, or the epoch `auto` chose
    (progress.average_from, None until its trigger)."""
    if train_cfg.average == "auto":
        return progress.average_from
    return train_cfg.average


def begin_epoch(state, train_cfg):
    """At the start of an epoch: start averaging if this is its epoch -> True if it started."""
    p = state.progress
    first = from_epoch(train_cfg, p)
    if state.average is not None or first is None or p.epoch < first:
        return False
    state.average = {k: v.copy() for k, v in state.params.items()}  # replaced by θ_1 at the first update
    p.average_count = 0
    p.average_from, p.average_step = p.epoch, p.step
    return True


def update(state, keys):
    """After an update: θ̄ ← θ̄ + (θ − θ̄) / k for the trained arrays `keys` (buffers never move),
    in cache-sized chunks split over the cores: one pass over memory instead of three, the same
    float operations on every entry (the arrays are contiguous: params and their copies)."""
    if state.average is None:
        return
    state.progress.average_count += 1
    k = state.progress.average_count
    for key in keys:
        mean, theta = state.average[key], state.params[key]
        if k == 1:
            np.copyto(mean, theta)  # θ̄_1 = θ_1 exactly
            continue
        step = mean.dtype.type(1.0 / k)
        assert mean.flags.c_contiguous and theta.flags.c_contiguous  # reshape(-1) must be a view
        flat_mean, flat_theta = mean.reshape(-1), theta.reshape(-1)

        def move(a, b, delta, flat_mean=flat_mean, flat_theta=flat_theta, step=step):
            np.subtract(flat_theta[a:b], flat_mean[a:b], out=delta)
            delta *= step
            flat_mean[a:b] += delta
        parallel.each_chunk(mean.size, move, mean.dtype)


def weights(state):
    """The weights validation and the kept model use: θ̄ while averaging, else θ."""
    return state.average if state.average is not None else state.params


def restart_at(state, params):
    """An epoch rejected while averaging: θ and θ̄ both become `params` (the best average)."""
    state.params = {k: v.copy() for k, v in params.items()}
    state.average = {k: v.copy() for k, v in params.items()}
    state.progress.average_count = 1


def auto_trigger(train_cfg, progress, valid_ppl):
    """After an epoch's validation: whether `auto` starts averaging from the next epoch: valid
    perplexity not below the best of the epochs before the last `nonmono` (history holds the
    epochs before this one)."""
    if train_cfg.average != "auto" or progress.average_from is not None:
        return False
    earlier = [e["valid_ppl"] for e in progress.history if e.get("valid_ppl") is not None]
    n = train_cfg.nonmono
    return len(earlier) > n and valid_ppl > min(earlier[:-n])
