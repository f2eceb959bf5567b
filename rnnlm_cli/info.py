"""What a model directory is and how its run went: `rnnlm info`, and the run as `rnnlm plot`
reads it.

The status comes from info.json and the lock together: a live process holding DIR/.lock means
the run is training (a resumed run leaves info.json as it was until its status changes); a
status `training` with no live holder means the run stopped without saying so (killed with -9,
or a crash). The figures come from the metrics log (history.py), the end record when the run
finished, and the checkpoint's progress (where a resume would start).
"""

import signal

from . import checkpoint, history, lock, model, modeldir, units
from .config import config_to_dict, paths_text, short_form
from .evaluate import json_safe

def _status(model_dir, info, h):
    """-> (status, detail, pid): training, interrupted, complete or diverged (or unknown), a few
    words saying why, and the pid of the live run writing DIR (None when there is none)."""
    pid = lock.holder(model_dir)
    recorded = info.get("status")
    if pid is not None:
        return "training", f"pid {pid or 'unknown'} is writing it", pid
    if recorded == "training":
        return "interrupted", "killed or crashed: info.json says training but no run holds the lock", None
    ending = {"complete": h.end, "interrupted": h.interrupted, "diverged": h.diverged}
    if recorded in ending and ending[recorded] is None:  # --resume cut the record off the log, then stopped
        return "interrupted", (f"killed or crashed after a --resume: info.json still says {recorded}, "
                               f"the log has no '{'end' if recorded == 'complete' else recorded}' record"), None
    if recorded == "interrupted":
        signum = (h.interrupted or {}).get("signal")
        try:
            name = signal.Signals(signum).name
        except (ValueError, TypeError):
            name = f"signal {signum}"
        return "interrupted", f"stopped by {name}, checkpoint saved", None
    if recorded == "complete" or (recorded is None and h.end is not None):
        detail = (h.end or info).get("stop_reason") or ""
        if (h.end or info).get("final_evaluation") == modeldir.FINAL_EVALUATION_SKIPPED:
            detail += f"{'; ' if detail else ''}final evaluation skipped by a signal: rnnlm eval {model_dir} runs it"
        return "complete", detail, None
    if recorded == "diverged":
        at = f" at step {h.diverged['step']}" if h.diverged else ""
        return "diverged", (f"{info.get('reason', 'unknown reason')}{at} after {len(h.rollbacks)} rollbacks; "
                            f"weights.npz holds the model of step {info.get('step', '?')}"), None
    return "unknown", "no info.json" if recorded is None else f"info.json says {str(recorded)[:40]!r}", None


def load_run(model_dir):
    """A run as its files tell it, without the weights: {dir, info, config, history, status,
    detail, pid}. A missing folder or a damaged info.json, config.yaml or metrics.jsonl is a
    UserError naming the file."""
    model_dir = modeldir.check_dir(model_dir)
    info = modeldir.check_format(model_dir)
    config = modeldir.load_config_file(model_dir / modeldir.CONFIG)
    records = modeldir.read_metrics(model_dir)
    per_step = config.train.batch_size * config.train.bptt
    h = history.from_events(records, str(model_dir / modeldir.METRICS), per_step)
    status, detail, pid = _status(model_dir, info, h)
    return {"dir": model_dir, "info": info, "config": config, "history": h, "status": status, "detail": detail,
            "pid": pid}


def _progress_figures(run, progress):
    """{epochs, steps, tokens, train_seconds, lr}: from the end record of a finished run, from
    the checkpoint of an interrupted one (saved at the interruption), else from the log."""
    h = run["history"]
    if h.end is not None and run["status"] == "complete":
        e = h.end
        return {"epochs": e.get("epochs"), "steps": e.get("steps"), "tokens": e.get("tokens"),
                "train_seconds": e.get("train_seconds"), "lr": e.get("lr")}
    if progress is not None and run["status"] == "interrupted" and h.interrupted is not None:
        return {"epochs": len(progress.history), "steps": progress.step, "tokens": progress.tokens,
                "train_seconds": progress.train_seconds, "lr": progress.lr}
    last = history.last_point(h)
    rates = [p["lr"] for p in h.train[-1:] + h.epochs[-1:] if p["step"] == last["step"]]
    rates += [r["lr"] for r in h.rollbacks[-1:] if r["to_step"] == last["step"]]  # the rate it went on with
    return {"epochs": len(h.epochs), "steps": last["step"], "tokens": last["tokens"],
            "train_seconds": last["seconds"], "lr": rates[-1] if rates else None}


def summarize(model_dir):
    """Everything `rnnlm info` reports, as a JSON-able dict. The model itself (config,
    vocabulary, weights) is loaded and checked like `eval` does, so a damaged one is refused."""
    run = load_run(model_dir)
    config, vocab, params = modeldir.load_model(model_dir)
    h, info, end = run["history"], run["info"], run["history"].end or {}
    progress = checkpoint.read_progress(run["dir"]) if run["status"] != "complete" else None
    counts = model.parameter_counts(params, config.model)
    best = history.best_epoch(h)
    summary = {
        "dir": str(model_dir), "status": run["status"], "detail": run["detail"], "pid": run["pid"],
        "rnnlm_version": info.get("rnnlm_version"), "format_version": info.get("format_version"),
        "config_short": short_form(config), "config": config_to_dict(config), "vocab_size": len(vocab),
        "parameters": {k: {"shape": list(shape), "count": n, "trained": t} for k, (shape, n, t) in counts.items()},
        "parameter_total": sum(n for _, n, t in counts.values() if t),
        **_progress_figures(run, progress), "rollbacks": len(h.rollbacks),
        "best_valid_ppl": best["valid_ppl"] if best else None, "best_epoch": best["epoch"] if best else None,
        "valid_ppl": end.get("valid_ppl"), "test_ppl": end.get("test_ppl"),
        "unigram_valid_ppl": end.get("unigram_valid_ppl", info.get("unigram_valid_ppl")),
        "tokens_per_sec": _tokens_per_sec(h), "wall_seconds": end.get("wall_seconds"),
        "stop_reason": end.get("stop_reason"), "final_evaluation": end.get("final_evaluation", "done" if end else None),
        "average_from": {"epoch": h.average["epoch"], "step": h.average["step"]} if h.average else None,
        "resume_from": ({"epoch": progress.epoch, "step": progress.step, "processes": progress.processes}
                        if progress is not None else None),
    }
    return {k: json_safe(v) for k, v in summary.items()}


def _tokens_per_sec(h):
    """Training speed: the end record's, else the last logged one."""
    latest = sorted(h.epochs[-1:] + h.train[-1:], key=lambda p: -p["step"])
    for record in ([h.end] if h.end else []) + latest:
        rate = record.get("tokens_per_sec")
        if rate:
            return rate
    return None


def _n(count, noun):
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _maybe(value, fmt):
    return "n/a" if value is None else fmt(value)


def describe(s):
    """The lines `rnnlm info` prints for a summary (summarize's dict)."""
    status = s["status"] + (f" ({s['detail']})" if s["detail"] else "")
    short, data = s["config_short"], s["config"]["data"]
    lines = [f"{s['dir']}: {status}; written by rnnlm {s['rnnlm_version'] or 'unknown'}",
             f"data     train {paths_text(data['train'])}", f"         valid {data['valid']}",
             f"         test  {data['test'] or 'none'}; tokenizer {data['tokenizer']}"
             + ("; sentences independent (the state is reset at each <eos>)" if data.get("independent") else ""),
             f"vocab    {s['vocab_size']} tokens ({short['vocab']})",
             f"model    {short['model']}", f"train    {short['train']}",
             f"params   {s['parameter_total']:,} trained"]
    width = max(len(k) for k in s["parameters"])
    for key, p in s["parameters"].items():
        shape = "×".join(map(str, p["shape"])) or "scalar"
        lines.append(f"         {key:<{width}}  {shape:>12}  {p['count']:>12,}" + ("" if p["trained"] else "  (not trained)"))
    lines.append(f"progress {_n(s['epochs'], 'epoch')}, {_n(s['steps'], 'step')}, {_maybe(s['tokens'], units.count)} "
                 f"tokens, lr {_maybe(s['lr'], lambda x: f'{x:g}')}, {_n(s['rollbacks'], 'rollback')}")
    best = (f"best {units.ppl(s['best_valid_ppl'])} (epoch {s['best_epoch']}, "
            f"{s['config']['train']['eval_batch_size']} streams)" if s["best_valid_ppl"] is not None else "no epoch yet")
    exact = f"; kept model {units.ppl(s['valid_ppl'])} (exact)" if s["valid_ppl"] is not None else ""
    unigram = f"; unigram {units.ppl(s['unigram_valid_ppl'])}" if s["unigram_valid_ppl"] is not None else ""
    lines.append(f"valid    {best}{exact}{unigram}")
    if s["average_from"] is not None:
        a = s["average_from"]
        lines.append(f"average  weights averaged from epoch {a['epoch']} (after step {a['step']}): validation and the "
                     f"kept model use the running mean")
    pending = s["test_ppl"] is None and s["status"] in ("training", "interrupted")
    skipped = s["test_ppl"] is None and s.get("final_evaluation") == modeldir.FINAL_EVALUATION_SKIPPED
    lines.append(f"test     {units.ppl(s['test_ppl'])}" + (" until the run ends (rnnlm eval DIR: the kept model's)"
                                                          if pending else " (final evaluation skipped: rnnlm eval DIR)"
                                                          if skipped else ""))
    wall = f", {units.seconds(s['wall_seconds'])} wall (the last session)" if s["wall_seconds"] is not None else ""
    lines.append(f"speed    {_maybe(s['tokens_per_sec'], lambda r: f'{r / 1e3:.1f}k tokens/s')}; "
                 f"{_maybe(s['train_seconds'], units.seconds)} training{wall}")
    if s["resume_from"] is not None and s["status"] == "interrupted":
        r = s["resume_from"]
        lines.append(f"resume   from epoch {r['epoch']}, step {r['step']}: "
                     f"{modeldir.resume_command(s['dir'], r.get('processes', 1))}")
    return lines
