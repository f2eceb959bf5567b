"""A run's history, from the records of its metrics.jsonl (modeldir.read_metrics reads them):
the logged training steps, the validated epochs, the learning-rate cuts, the rollbacks and how
the run stopped. Pure functions of the record list; `rnnlm plot` draws it, `rnnlm info` and the
model card sum it up.

Every point gets three positions: `step`, `tokens` (training targets so far) and `seconds`
(training time so far, validation excluded: tokens / tokens_per_sec). A `rollback`, `diverged`
or `interrupted` record names only its step; its tokens and seconds are carried on from the
record logged before it.

A rollback returns the run to an earlier step (`to_step`): the steps logged after that one
before the rollback were undone. They move to `abandoned` (one list per rollback), and `train`
goes on from `to_step`, so `train` is the history of the model that came out of the run.
"""

import math
from dataclasses import dataclass, field

from .errors import UserError


@dataclass
class History:
    train: list = field(default_factory=list)  # {step, tokens, seconds, epoch, loss, lr}, the steps that count
    abandoned: list = field(default_factory=list)  # per rollback, the train points it undid
    epochs: list = field(default_factory=list)  # the epoch records, positioned, valid_ppl, accepted, lr
    cuts: list = field(default_factory=list)  # {epoch, step, tokens, seconds, lr, new_lr}: the lr cut after an epoch
    rollbacks: list = field(default_factory=list)  # the rollback records, positioned
    diverged: dict | None = None
    interrupted: dict | None = None
    average: dict | None = None  # where weight averaging began: {epoch, step, tokens, seconds}
    end: dict | None = None


class _Bad(Exception):
    pass


def _number(record, key, *, nullable=False, integer=False):
    value = record.get(key)
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise _Bad(f"'{key}' is {str(value)[:40]!r}, expected {'an integer' if integer else 'a number'}")
    return value


def _seconds(record):
    """Training seconds at a record: its tokens over its tokens_per_sec (None when unknown)."""
    rate = _number(record, "tokens_per_sec", nullable=True)
    return record["tokens"] / rate if rate and math.isfinite(rate) and rate > 0 else None


def _point(record):
    point = {"epoch": _number(record, "epoch", integer=True), "step": _number(record, "step", integer=True),
             "tokens": _number(record, "tokens", integer=True), "lr": _number(record, "lr")}
    point["seconds"] = _seconds(record)
    point["tokens_per_sec"] = record.get("tokens_per_sec")
    return point


def _placed(record, last, tokens_per_step):
    """A record that names only its step, positioned from the `last` point logged before it."""
    step = _number(record, "step", integer=True)
    placed = dict(record, step=step, tokens=last["tokens"] + max(0, step - last["step"]) * tokens_per_step,
                  seconds=last["seconds"])
    placed["epoch"] = _number(record, "epoch", integer=True)
    return placed


def from_events(records, source="metrics.jsonl", tokens_per_step=0):
    """The History of a run's records. `tokens_per_step` (N·T) places the records that name only
    a step. A record with a missing or mistyped field is a UserError naming `source` and its line."""
    h = History()
    last = {"step": 0, "tokens": 0, "seconds": 0.0}  # the last positioned point (train or epoch)
    pending = None  # the last epoch record, until the rate that followed it is known
    for number, record in enumerate(records, 1):
        try:
            last, pending = _take(h, record, last, pending, tokens_per_step)
        except (_Bad, KeyError, TypeError) as e:
            what = f"no '{e.args[0]}'" if isinstance(e, KeyError) else str(e)
            raise UserError(f"{source}, line {number}: a damaged '{record.get('event')}' record ({what})") from None
    return h


def _take(h, record, last, pending, tokens_per_step):
    """Add one record to h -> (the last positioned point, the epoch whose next rate is pending)."""
    kind = record["event"]
    if kind in ("train", "epoch", "end"):
        rate = _number(record, "lr", nullable=kind == "end")
        if pending is not None and rate is not None and rate < pending["lr"]:
            h.cuts.append(dict(pending, new_lr=rate))
        pending = None
    if kind == "train":
        point = dict(_point(record), loss=_number(record, "loss", nullable=True))
        point["seconds"] = point["seconds"] if point["seconds"] is not None else last["seconds"]
        h.train.append(point)
        return point, pending
    if kind == "epoch":
        point = dict(_point(record), valid_ppl=_number(record, "valid_ppl", nullable=True),
                     train_loss=_number(record, "train_loss", nullable=True), accepted=record["accepted"] is True)
        point["seconds"] = point["seconds"] if point["seconds"] is not None else last["seconds"]
        h.epochs.append(point)
        return point, point
    if kind == "rollback":
        return _rollback(h, record, last, pending, tokens_per_step), None
    if kind in ("diverged", "interrupted", "average"):
        setattr(h, kind, _placed(record, last, tokens_per_step))
    elif kind == "end":
        h.end = dict(record, seconds=_number(record, "train_seconds", nullable=True))
    return last, pending


def _rollback(h, record, last, pending, tokens_per_step):
    """A rollback: the train points after its to_step are undone; a cut that came before the
    failure is found from the rate it halved (-> the last positioned point)."""
    placed = _placed(record, last, tokens_per_step)
    back = _number(record, "to_step", integer=True)
    rate = _number(record, "lr")
    if pending is not None and 2 * rate < pending["lr"]:
        h.cuts.append(dict(pending, new_lr=2 * rate))
    h.abandoned.append([p for p in h.train if p["step"] > back])
    h.train = [p for p in h.train if p["step"] <= back]
    kept = [p for p in h.train + h.epochs if p["step"] <= back]
    resumed = max(kept, key=lambda p: p["step"], default={"step": 0, "tokens": 0})
    placed["to_epoch"] = _number(record, "to_epoch", integer=True)
    placed["to_tokens"] = resumed["tokens"] + (back - resumed["step"]) * tokens_per_step
    h.rollbacks.append(placed)
    return {"step": back, "tokens": placed["to_tokens"], "seconds": placed["seconds"]}


def windows_per_epoch(h):
    """Steps per epoch, from the first epoch record (epoch e ends at step e·W); None before one."""
    first = next((e for e in h.epochs if e["epoch"] >= 1 and e["step"] > 0), None)
    return first["step"] // first["epoch"] if first else None


def best_epoch(h):
    """The accepted epoch with the lowest valid perplexity (None before one)."""
    accepted = [e for e in h.epochs if e["accepted"] and e["valid_ppl"] is not None]
    return min(accepted, key=lambda e: e["valid_ppl"], default=None)


def last_point(h):
    """The latest position of the model the log knows: {epoch, step, tokens, seconds} of the last
    step logged, or of the step the last rollback returned to (zeros for an empty log)."""
    returned = [{"epoch": r["to_epoch"], "step": r["to_step"], "tokens": r["to_tokens"], "seconds": r["seconds"]}
                for r in h.rollbacks[-1:]]
    return max(h.train[-1:] + h.epochs[-1:] + returned, key=lambda p: p["step"],
               default={"epoch": 1, "step": 0, "tokens": 0, "seconds": 0.0})
