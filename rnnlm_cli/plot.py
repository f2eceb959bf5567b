"""Learning curves of one or more runs, from their metrics.jsonl: `rnnlm plot`.

The top panel has, per run, the training perplexity (exp of the logged window losses, smoothed
by a centred moving average over the logged steps, the raw points faint behind it) and the
valid perplexity after each epoch (a hollow marker: an epoch the schedule rejected); the steps a
rollback undid are dotted, a rollback is an ✕ at the top edge, a learning-rate cut a dotted
vertical line, the start of weight averaging a dash-dotted one. The bottom panel is the learning rate. The x axis is training tokens, training
time (validation excluded) or epochs. Runs are told apart by colour; the legend names each
(with its exact valid and test perplexity when the run finished, else its status).

matplotlib is an optional extra, imported in this module only, drawn with its Agg canvas (no
pyplot: no window, no global state). The figure is written atomically.
"""

import io
import math
from pathlib import Path

from . import checkpoint, data, files, history, info, units
from .errors import UserError

INSTALL = "pip install matplotlib (from a checkout of rnnlm: pip install -e '.[plot]')"
FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
AXES = ("tokens", "time", "epoch")
FIGSIZE, DPI = (9.0, 6.4), 100


def _matplotlib():
    """matplotlib's Figure class, or the one-line error that says how to install it."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError(f"rnnlm plot needs matplotlib, an optional extra: {INSTALL}") from None
    return Figure


def plot_runs(model_dirs, out_path, x_axis="tokens", log_y=False, labels=()):
    """Draw the runs in model_dirs into out_path (.png, .svg or .pdf) -> the path written."""
    out_path = Path(out_path)
    fmt = FORMATS.get(out_path.suffix.lower())
    if fmt is None:
        raise UserError(f"-o {out_path}: unknown figure format '{out_path.suffix}'; use {', '.join(FORMATS)}")
    fig = figure(model_dirs, x_axis, log_y, labels)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=DPI, metadata=_metadata(fmt))
    data = _palette_png(buffer.getvalue()) if fmt == "png" else buffer.getvalue()
    files.atomic_write(out_path, lambda f: f.write(data))
    return out_path


def _palette_png(data):
    """The PNG as a 256-colour palette image: line art loses nothing visible and the file shrinks
    to about a third (Pillow comes with matplotlib)."""
    from PIL import Image
    image = Image.open(io.BytesIO(data)).convert("RGB")
    out = io.BytesIO()
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, format="png",
                                                                                             optimize=True)
    return out.getvalue()


def figure(model_dirs, x_axis="tokens", log_y=False, labels=()):
    """The matplotlib Figure of the runs in model_dirs (each read by info.load_run)."""
    if x_axis not in AXES:
        raise UserError(f"--x {x_axis}: must be one of {', '.join(AXES)}")
    if labels and len(labels) != len(model_dirs):
        raise UserError(f"--label given {len(labels)} times for {len(model_dirs)} model directories; give one "
                        f"per directory, in the same order, or none")
    Figure = _matplotlib()
    runs = [info.load_run(d) for d in model_dirs]
    return _figure(Figure, runs, list(labels) or _names(model_dirs), x_axis, log_y)


def _metadata(fmt):
    """No timestamps or versions in the file: the same runs give the same bytes."""
    return {"png": {"Software": None}, "svg": {"Date": None, "Creator": None},
            "pdf": {"CreationDate": None, "Producer": None, "Creator": None}}[fmt]


def _names(model_dirs):
    """Each run's folder name; parent/name where two runs share a folder name."""
    paths = [Path(d).resolve() for d in model_dirs]
    short = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if short.count(p.name) > 1 else p.name for p in paths]


# --------------------------------------------------------------------------------------------
# positions on the x axis


def _time_unit(runs):
    """(divisor, name) for training seconds: seconds, minutes or hours, by the longest run."""
    longest = max((p["seconds"] or 0 for r in runs for p in r["history"].train + r["history"].epochs), default=0)
    return (3600.0, "hours") if longest > 3 * 3600 else (60.0, "minutes") if longest > 180 else (1.0, "seconds")


def _epoch_length(run):
    """Steps per epoch: from the log's first epoch, else from the checkpoint's training-stream
    length (a run still in its first epoch); None when neither says."""
    windows = history.windows_per_epoch(run["history"])
    if windows:
        return windows
    progress = checkpoint.read_progress(run["dir"])
    tc = run["config"].train
    if progress is None or not progress.train_tokens:
        return None
    return max(1, data.windows_per_epoch(progress.train_tokens, tc.batch_size, tc.bptt))


def _position(x_axis, run, time_unit):
    """A function: point (step, tokens, seconds, epoch) -> its x."""
    if x_axis == "tokens":
        return lambda p: p["tokens"]
    if x_axis == "time":
        return lambda p: (p["seconds"] or 0.0) / time_unit
    windows = _epoch_length(run)
    if windows is None:
        return lambda p: p["epoch"] - 1  # no epoch length known: the start of its epoch
    return lambda p: p["step"] / windows


def _x_label(x_axis, time_name):
    return {"tokens": "training tokens (targets seen)", "epoch": "epoch",
            "time": f"training time ({time_name}; validation excluded)"}[x_axis]


# --------------------------------------------------------------------------------------------
# the figure


def smooth(values, span):
    """Centred moving average over `span` points (fewer at the ends): the curve a noisy series
    of window losses is read through, without the lag of a trailing average."""
    half, out = span // 2, []
    for i in range(len(values)):
        window = values[max(0, i - half):i + half + 1]
        out.append(sum(window) / len(window))
    return out


def _span(n):
    """Points averaged by the smoothing: about a twelfth of the logged steps (1, none, for a few)."""
    return max(1, min(51, round(n / 12)))


def _figure(Figure, runs, names, x_axis, log_y):
    """Perplexity over learning rate, a colour per run, the key above and the runs below."""
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3.2, 1))
    time_unit, time_name = _time_unit(runs)
    colours = [f"C{i % 10}" for i in range(len(runs))]
    seen, handles, visible = set(), [], []
    for run, name, colour in zip(runs, names, colours):
        x = _position(x_axis, run, time_unit)
        visible += _draw_run(top, bottom, run, x, colour, seen)
        handles.append(_run_handle(run, name, colour))
    _style_axes(top, bottom, x_axis, time_name, log_y, visible)
    key = _style_handles(seen)
    if key:  # above the panels, the runs below them: a legend never hides a curve
        fig.legend(handles=key, loc="outside upper center", ncol=min(4, len(key)), fontsize=8, frameon=False)
    wide = max(len(h.get_label()) for h in handles) > 48
    fig.legend(handles=handles, loc="outside lower center", ncol=1 if wide else min(2, len(handles)), fontsize=9,
               frameon=False)
    return fig


def _draw_run(top, bottom, run, x, colour, seen):
    """Draw one run in both panels -> the perplexities shown (for the y limits); `seen`
    collects the kinds of marks drawn, for the key."""
    h, shown = run["history"], []
    if run["config"].model.loss == "cross_entropy":  # exp of another loss is no perplexity
        shown += _draw_train(top, h, x, colour, seen)
    epochs = [e for e in h.epochs if e["valid_ppl"] is not None]
    if epochs:
        top.plot([x(e) for e in epochs], [e["valid_ppl"] for e in epochs], color=colour, lw=1.2, zorder=3)
        for e in epochs:
            hollow = not e["accepted"]
            top.plot([x(e)], [e["valid_ppl"]], marker="o", ms=5, color=colour, zorder=4,
                     markerfacecolor="white" if hollow else colour)
            seen.add("rejected" if hollow else "valid")
        shown += [e["valid_ppl"] for e in epochs]
    _draw_events(top, h, x, colour, seen)
    _draw_lr(bottom, h, x, colour, seen)
    return shown


def _draw_train(top, h, x, colour, seen):
    points = [p for p in h.train if _finite(p["loss"])]
    for segment in h.abandoned:
        undone = [p for p in segment if _finite(p["loss"])]
        if undone:
            top.plot([x(p) for p in undone], [_exp(p["loss"]) for p in undone], color=colour, lw=1, ls=":",
                     marker=".", ms=3, alpha=0.8)
            seen.add("undone")
    if not points:
        return []
    xs, losses = [x(p) for p in points], [p["loss"] for p in points]
    span = _span(len(points))
    if span > 1:
        top.plot(xs, [_exp(v) for v in losses], color=colour, lw=0.6, alpha=0.25)
    smoothed = [_exp(v) for v in smooth(losses, span)]
    top.plot(xs, smoothed, color=colour, lw=1.6, alpha=0.9)
    seen.add("train")
    return smoothed[len(smoothed) // 10:]  # the first steps (near V) would squash the y axis


def _finite(v):
    return v is not None and math.isfinite(v)


def _exp(v):
    return math.exp(min(v, 700.0))


def _draw_events(top, h, x, colour, seen):
    edge = top.get_xaxis_transform()  # x in data, y in axes fractions
    for cut in h.cuts:
        top.axvline(x(cut), color=colour, lw=1, ls=(0, (2, 2)), alpha=0.7, zorder=1)
        seen.add("cut")
    for r in h.rollbacks:
        top.plot([x(r)], [0.97], transform=edge, marker="X", ms=9, color=colour, markeredgecolor="black",
                 markeredgewidth=0.5, clip_on=False, zorder=5)
        seen.add("rollback")
    if h.average:  # weight averaging begins: validation from here on is of the running mean
        top.axvline(x(h.average), color=colour, lw=1.2, ls="-.", alpha=0.8, zorder=1)
        seen.add("average")
    if h.diverged:
        top.plot([x(h.diverged)], [0.97], transform=edge, marker="X", ms=14, color=colour, markeredgecolor="red",
                 markeredgewidth=1.5, clip_on=False, zorder=5)
        seen.add("diverged")


def _draw_lr(bottom, h, x, colour, seen):
    """The learning rate: each train point's, and at each epoch end the rate it was trained
    with, then the rate after (a step down at a cut)."""
    points = sorted(h.train + h.epochs, key=lambda p: (p["step"], "valid_ppl" in p))
    xs, rates = [x(p) for p in points], [p["lr"] for p in points]
    if not xs:
        return
    bottom.plot(xs, rates, color=colour, lw=1.4, drawstyle="steps-pre")
    for cut in h.cuts:
        bottom.plot([x(cut)], [cut["new_lr"]], marker="v", ms=6, color=colour, zorder=4)
        seen.add("cut")


def _run_handle(run, name, colour):
    from matplotlib.lines import Line2D
    return Line2D([], [], color=colour, lw=2, label=f"{name}: {_run_note(run)}")


def _run_note(run):
    """What the legend says of a run: its exact figures when finished, else where it stopped."""
    h, status = run["history"], run["status"]
    end = h.end or {}
    best = history.best_epoch(h)
    if status == "complete" and end.get("valid_ppl") is not None:
        test = f", test {units.ppl(end['test_ppl'])}" if end.get("test_ppl") is not None else ""
        return f"valid {units.ppl(end['valid_ppl'])}{test}"
    last = history.last_point(h)
    where = f"epoch {last['epoch']}, step {last['step']}"
    best_text = f", best valid {units.ppl(best['valid_ppl'])}" if best else ""
    notes = {"training": f"training ({where})", "interrupted": f"interrupted ({where})",
             "diverged": f"diverged at step {(h.diverged or last)['step']}"}
    return notes.get(status, status) + best_text + ("" if run["config"].model.loss == "cross_entropy"
                                                    else f"; train loss {run['config'].model.loss} not drawn")


def _style_handles(seen):
    from matplotlib.lines import Line2D
    grey = "0.35"
    styles = [("train", dict(color=grey, lw=1.6), "train, smoothed"),
              ("valid", dict(color=grey, lw=1.2, marker="o", ms=5), "valid, per epoch"),
              ("rejected", dict(color=grey, lw=0, marker="o", ms=5, markerfacecolor="white"), "rejected epoch"),
              ("undone", dict(color=grey, lw=1, ls=":"), "steps undone by a rollback"),
              ("rollback", dict(color=grey, lw=0, marker="X", ms=9, markeredgecolor="black"), "rollback"),
              ("diverged", dict(color=grey, lw=0, marker="X", ms=12, markeredgecolor="red"), "diverged"),
              ("cut", dict(color=grey, lw=1, ls=(0, (2, 2)), marker="v", ms=6), "lr cut"),
              ("average", dict(color=grey, lw=1.2, ls="-."), "weight averaging begins")]
    return [Line2D([], [], label=label, **style) for key, style, label in styles if key in seen]


def _style_axes(top, bottom, x_axis, time_name, log_y, shown):
    from matplotlib.ticker import FuncFormatter
    top.set_ylabel("perplexity")
    top.grid(True, alpha=0.3)
    bottom.grid(True, alpha=0.3)
    if log_y:
        _log_axis(top.yaxis)
    elif shown:
        low, high = min(shown), max(shown)
        pad = 0.08 * (high - low or high)
        top.set_ylim(max(0.0, low - pad), high + pad)
    bottom.margins(y=0.15)
    _log_axis(bottom.yaxis)
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel(_x_label(x_axis, time_name))
    if x_axis == "tokens":
        bottom.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1e6:g}M" if v >= 1e6 else
                                                       f"{v / 1e3:g}k" if v >= 1e3 else f"{v:g}"))
    bottom.set_xlim(left=0)
    if not top.get_lines():
        top.text(0.5, 0.5, "nothing logged yet", transform=top.transAxes, ha="center", va="center", color="0.4")


def _log_axis(axis):
    """A log scale labelled in plain numbers (0.5, 20, 100): at 1, 2 and 5 times the powers of
    ten over a range of up to 1.5 decades, else at the powers of ten alone."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    axis.axes.set_yscale("log")
    low, high = axis.axes.get_ylim()
    decades = math.log10(high / low) if low > 0 and high > low else 0.0
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if decades <= 1.5 else (1.0,)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())
