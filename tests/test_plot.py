"""`rnnlm plot`: what the figure shows (curves, epochs, cuts, rollbacks, the legend's figures),
read back from the figure's artists against metrics.jsonl; a readable layout (no text over
other text or over the panels); the files it writes; and the one line it prints when matplotlib
is missing (tested without matplotlib, so it runs everywhere)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HOLD_LOCK, assert_clean_error

from rnnlm_cli import history


def events(model_dir):
    return [json.loads(line) for line in (Path(model_dir) / "metrics.jsonl").read_text().splitlines()]


def test_without_matplotlib_plot_says_how_to_install_it(run_dirs, tmp_path, run_cli, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)  # `import matplotlib` now fails as if it were absent
    code, out, err = run_cli("plot", run_dirs[0]["complete"], "-o", tmp_path / "c.png")
    assert_clean_error(code, err, 2, "needs matplotlib", "pip install matplotlib", "pip install -e '.[plot]'")
    assert not (tmp_path / "c.png").exists()


# --------------------------------------------------------------------------------------------
# with matplotlib

@pytest.fixture
def mpl():
    return pytest.importorskip("matplotlib")


def _figure(dirs, **kwargs):
    from rnnlm_cli import plot
    return plot.figure([str(d) for d in dirs], **kwargs)


def _marks(ax, marker):
    """The (x, y) of every single-point mark with this marker in ax."""
    return [(line.get_xdata()[0], line.get_ydata()[0]) for line in ax.get_lines()
            if line.get_marker() == marker and len(line.get_xdata()) == 1]


def _legend_texts(fig):
    return [[t.get_text() for t in legend.get_texts()] for legend in fig.legends]


def test_the_figure_shows_valid_per_epoch_cuts_and_the_figures_of_a_finished_run(mpl, run_dirs):
    out = run_dirs[0]["complete"]
    fig = _figure([out])
    top, bottom = fig.axes
    epochs = [e for e in events(out) if e["event"] == "epoch"]
    assert _marks(top, "o") == [(e["tokens"], e["valid_ppl"]) for e in epochs]
    # the step schedule cut the rate after epochs 2, 3 and 4: a ▼ at each new rate
    assert _marks(bottom, "v") == [(e["tokens"], e["lr"] * 0.5) for e in epochs[1:]]
    end = events(out)[-1]
    key, runs = _legend_texts(fig)
    assert runs == [f"complete: valid {end['valid_ppl']:.2f}, test {end['test_ppl']:.2f}"]
    assert {"train, smoothed", "valid, per epoch", "lr cut"} <= set(key) and "rollback" not in key
    assert top.get_ylabel() == "perplexity" and bottom.get_ylabel() == "learning rate"
    assert bottom.get_xlabel() == "training tokens (targets seen)"


def test_a_rollback_is_marked_and_the_steps_it_undid_are_drawn_apart(mpl, run_dirs):
    out = run_dirs[0]["rollback"]
    fig = _figure([out])
    top = fig.axes[0]
    rollback = [e for e in events(out) if e["event"] == "rollback"]
    assert len(rollback) == 1 and rollback[0]["to_step"] == 20
    assert len(_marks(top, "X")) == 1  # at the top edge, above the failed step
    assert _marks(top, "X")[0][0] == pytest.approx(30 * 4 * 6)  # step 30 of 24 targets
    undone = [line for line in top.get_lines() if line.get_linestyle() == ":"]
    assert len(undone) == 0 or all(min(line.get_xdata()) > 20 * 24 for line in undone)
    key, _ = _legend_texts(fig)
    assert "rollback" in key


def test_rejected_epochs_are_hollow(mpl, run_dirs, tmp_path):
    out = tmp_path / "rejected"
    shutil.copytree(run_dirs[0]["complete"], out)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    second = next(i for i, line in enumerate(lines) if '"epoch": 2' in line and '"event": "epoch"' in line)
    record = json.loads(lines[second])
    record["accepted"] = False
    lines[second] = json.dumps(record)
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    top = _figure([out]).axes[0]
    hollow = [line.get_xdata()[0] for line in top.get_lines()
              if line.get_marker() == "o" and line.get_markerfacecolor() == "white"]
    assert hollow == [record["tokens"]]


@pytest.fixture
def live_run(run_dirs, tmp_path):
    out = tmp_path / "live"
    shutil.copytree(run_dirs[0]["crashed"], out)
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield out
    proc.kill()
    proc.wait()


def test_several_runs_overlaid_each_named_with_its_state(mpl, run_dirs, live_run):
    dirs = run_dirs[0]
    order = [dirs["complete"], dirs["interrupted"], dirs["crashed"], dirs["diverged"], live_run]
    fig = _figure(order)
    _, runs = _legend_texts(fig)
    assert runs[0].startswith("complete: valid ")
    last = [e for e in events(dirs["interrupted"]) if e["event"] == "train"][-1]
    assert runs[1].startswith(f"interrupted: interrupted (epoch 2, step {last['step']})")
    assert runs[2].startswith("crashed: interrupted (epoch 2, step ")
    assert runs[3].startswith("diverged: diverged at step ")
    assert runs[4].startswith("live: training (epoch 2, step ")
    colours = {line.get_color() for line in fig.axes[1].get_lines()}
    assert len(colours) == 4  # one per run with a learning rate logged (the diverged run logged none)


def test_labels_and_their_count(mpl, run_dirs, tmp_path, run_cli):
    dirs = run_dirs[0]
    fig = _figure([dirs["complete"], dirs["rollback"]], labels=("sgd", "with a NaN"))
    assert [t.split(":")[0] for t in _legend_texts(fig)[1]] == ["sgd", "with a NaN"]
    code, _, err = run_cli("plot", dirs["complete"], dirs["rollback"], "--label", "one", "-o", tmp_path / "p.png")
    assert_clean_error(code, err, 2, "--label given 1 times for 2 model directories")


@pytest.mark.parametrize("axis", ["tokens", "time", "epoch"])
def test_the_x_axis(mpl, run_dirs, axis):
    out = run_dirs[0]["complete"]
    top, bottom = _figure([out], x_axis=axis).axes
    epochs = [e for e in events(out) if e["event"] == "epoch"]
    want = {"tokens": [e["tokens"] for e in epochs], "time": [e["tokens"] / e["tokens_per_sec"] for e in epochs],
            "epoch": [1, 2, 3, 4]}[axis]
    assert [x for x, _ in _marks(top, "o")] == pytest.approx(want)
    assert bottom.get_xlabel() == {"tokens": "training tokens (targets seen)", "epoch": "epoch",
                                   "time": "training time (seconds; validation excluded)"}[axis]


def test_the_epoch_axis_of_a_run_in_its_first_epoch_uses_the_checkpoint(mpl, run_dirs, tmp_path):
    out = tmp_path / "first"
    shutil.copytree(run_dirs[0]["crashed"], out)
    lines = [line for line in (out / "metrics.jsonl").read_text().splitlines() if '"epoch": 1' in line
             and '"event": "train"' in line]
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    top = _figure([out], x_axis="epoch").axes[0]
    steps = [json.loads(line)["step"] for line in lines]
    train_line = max(top.get_lines(), key=lambda line: len(line.get_xdata()))
    assert list(train_line.get_xdata()) == pytest.approx([s / 105 for s in steps])  # 105 windows per epoch


def test_log_y(mpl, run_dirs):
    top, _ = _figure([run_dirs[0]["complete"]], log_y=True).axes
    assert top.get_yscale() == "log"
    assert _figure([run_dirs[0]["complete"]]).axes[0].get_yscale() == "linear"


def _in_view(axis, loc):
    low, high = sorted(axis.get_view_interval())
    return low - 1e-9 * abs(high - low) <= loc <= high + 1e-9 * abs(high - low)


def _overlaps(a, b):
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_no_text_overlaps_other_text_or_the_panels(mpl, run_dirs, live_run):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    dirs = run_dirs[0]
    for axis in ("tokens", "time", "epoch"):
        fig = _figure([dirs["complete"], dirs["rollback"], dirs["interrupted"], dirs["diverged"], live_run],
                      x_axis=axis, log_y=axis == "time")
        renderer = FigureCanvasAgg(fig).get_renderer()
        fig.draw(renderer)
        panels = [ax.get_window_extent(renderer) for ax in fig.axes]
        legends = [legend.get_window_extent(renderer) for legend in fig.legends]
        labels = [ax.xaxis.label for ax in fig.axes if ax.get_xlabel()] + [ax.yaxis.label for ax in fig.axes]
        ticks = [tick.label1 for ax in fig.axes for axis in (ax.xaxis, ax.yaxis) for tick in axis.get_major_ticks()
                 if tick.label1.get_visible() and tick.label1.get_text() and _in_view(axis, tick.get_loc())]
        texts = [t.get_window_extent(renderer) for t in labels + ticks]
        boxes = legends + texts
        for i, a in enumerate(boxes):
            assert all(not _overlaps(a, b) for b in boxes[i + 1:]), (axis, i)
        for legend in legends:
            assert all(not _overlaps(legend, panel) for panel in panels), axis
            assert 0 <= legend.x0 and legend.x1 <= fig.bbox.width and 0 <= legend.y0 and legend.y1 <= fig.bbox.height


def test_plot_writes_the_file_atomically_and_the_same_runs_give_the_same_bytes(mpl, run_dirs, tmp_path, run_cli):
    dirs = run_dirs[0]
    for name in ("a.png", "b.png", "c.svg", "d.pdf"):
        code, out, err = run_cli("plot", dirs["complete"], dirs["rollback"], "-o", tmp_path / name)
        assert code == 0 and f"wrote {tmp_path / name}" in out, err
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert (tmp_path / "c.svg").read_text().lstrip().startswith("<?xml")
    assert (tmp_path / "d.pdf").read_bytes()[:5] == b"%PDF-"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("args, named", [
    (["MISSING", "-o", "p.png"], "not a model directory (no such folder)"),
    (["RUN", "-o", "p.jpeg"], "unknown figure format '.jpeg'"),
    (["RUN", "-o", "no/such/folder/p.png"], "cannot write here"),
])
def test_plot_refuses_with_one_line(mpl, run_dirs, tmp_path, run_cli, args, named):
    args = [str(run_dirs[0]["complete"]) if a == "RUN" else str(tmp_path / a) if a != "-o" else a for a in args]
    code, _, err = run_cli("plot", *args)
    assert_clean_error(code, err, 2, named)


def test_plot_of_a_damaged_log_names_the_line(mpl, run_dirs, tmp_path, run_cli):
    out = tmp_path / "damaged"
    shutil.copytree(run_dirs[0]["complete"], out)
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"event": "rollback", "epoch": 1}\n')
    n = len((out / "metrics.jsonl").read_text().splitlines())
    code, _, err = run_cli("plot", out, "-o", tmp_path / "p.png")
    assert_clean_error(code, err, 2, f"metrics.jsonl, line {n}", "rollback")


# --------------------------------------------------------------------------------------------
# the history the figure draws


def test_history_of_a_rollback_moves_the_undone_steps_apart():
    records = [{"event": "train", "epoch": 1, "step": s, "tokens": 10 * s, "loss": 1.0, "lr": 1.0,
                "tokens_per_sec": 100.0} for s in (2, 4, 6)]
    records.append({"event": "rollback", "epoch": 1, "step": 7, "reason": "loss nan", "to_epoch": 1, "to_step": 4,
                    "lr": 0.5, "rollbacks": 1})
    records.append({"event": "train", "epoch": 1, "step": 6, "tokens": 60, "loss": 0.9, "lr": 0.5,
                    "tokens_per_sec": 100.0})
    h = history.from_events(records, tokens_per_step=10)
    assert [p["step"] for p in h.train] == [2, 4, 6] and h.train[-1]["lr"] == 0.5
    assert [[p["step"] for p in segment] for segment in h.abandoned] == [[6]]
    assert h.rollbacks[0]["tokens"] == 70 and h.rollbacks[0]["to_tokens"] == 40
    assert h.rollbacks[0]["seconds"] == pytest.approx(0.6)  # of the last step logged before it
    assert h.cuts == []  # a rollback halves the rate, but that is no cut of the schedule


def test_history_finds_a_cut_followed_by_a_rollback():
    records = [{"event": "epoch", "epoch": 1, "step": 5, "tokens": 50, "train_loss": 2.0, "valid_ce": 1.0,
                "valid_ppl": 2.7, "lr": 1.0, "tokens_per_sec": 10.0, "accepted": True},
               {"event": "rollback", "epoch": 2, "step": 6, "reason": "loss nan", "to_epoch": 2, "to_step": 5,
                "lr": 0.25, "rollbacks": 1}]
    h = history.from_events(records)
    assert [(c["epoch"], c["lr"], c["new_lr"]) for c in h.cuts] == [(1, 1.0, 0.5)]
    assert history.last_point(h)["step"] == 5
