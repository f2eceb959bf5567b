"""The model card, DIR/README.md: what a model directory holds, in a page a person reads. Written
when training ends (complete or diverged; train.py calls model_card and modeldir.write_card):
the data, the model, how training went, the figures and the command that trains it again.

The figures are those of the run's end summary (train.py); the per-epoch table is the run's
history (history.py, from metrics.jsonl). Text only: no file is read here.
"""

import math

from . import modeldir, units
from .config import short_form


def model_card(name, config, card):
    """The Markdown text of the card. `card` holds: version, out_dir, vocab_size, counts
    (model.parameter_counts), stats (train/valid/test stats of data.encode_file, test may be
    None), history, summary (the end record, None for a diverged run), diverged (None, or
    {step, reason, kept_step}), init_from, changed ({key: value} where the run's config differs
    from config.yaml: the keys a --resume changed), processes (K of `mpiexec -n K`; 1 if absent)."""
    short = short_form(config)
    status = "complete" if card["summary"] is not None else "diverged"
    lines = [f"# Model card: {name}", "",
             f"A word-level language model ({short['model']}) trained by rnnlm {card['version']}: "
             f"{_ending(card)}. `rnnlm info` on this folder says more; `rnnlm plot` draws its learning curves.", ""]
    lines += _data(config, card) + _model(short, card) + _training(config, short, card)
    lines += _figures(card) if status == "complete" else _divergence(card)
    lines += _reproduce(card)
    return "\n".join(lines) + "\n"


def _ending(card):
    s = card["summary"]
    if s is not None:
        return f"training complete ({s['stop_reason']})"
    d = card["diverged"]
    return f"training diverged at step {d['step']} ({d['reason']})"


def _data(config, card):
    d, stats = config.data, card["stats"]
    rows = ["## Data", "", "| file | path | targets | OOV |", "| --- | --- | ---: | ---: |"]
    for key in ("train", "valid", "test"):
        st = stats.get(key)
        if st is not None:
            oov = "—" if key == "train" else f"{st['oov_rate']:.2%}"
            paths = getattr(d, key)
            shown = ", ".join(f"`{p}`" for p in (paths if isinstance(paths, list) else [paths]))
            rows.append(f"| {key} | {shown} | {st['targets']:,} | {oov} |")
    v = config.vocab
    cap = f", at most {v.max_size} in all" if v.max_size else ""
    times = "once" if v.min_count == 1 else f"{v.min_count} times"
    words = (f"the words of the word list `{v.file}` (`vocab.file`)" if v.file
             else f"the words of the train file seen at least {times}{cap}")
    rows += ["", f"Tokenizer `{d.tokenizer}`. Vocabulary: {card['vocab_size']:,} tokens (`<unk>`, `<eos>` and "
                 f"{words}), in `vocab.txt`."
             + (" Sentences are independent: the state is reset to zero at every `<eos>`." if d.independent else ""),
             ""]
    return rows


def _model(short, card):
    counts = card["counts"]
    total = sum(n for _, n, trained in counts.values() if trained)
    rows = ["## Model", "", f"{short['model']}: {total:,} trained parameters (`weights.npz`).", "",
            "| array | shape | parameters |", "| --- | --- | ---: |"]
    for key, (shape, n, trained) in counts.items():
        rows.append(f"| `{key}` | {' × '.join(map(str, shape))} | {n:,}{'' if trained else ' (not trained)'} |")
    if card["init_from"]:
        rows += ["", f"Its weights started from the model in `{card['init_from']}` (`--init`)."]
    return rows + [""]


def _training(config, short, card):
    h, s = card["history"], card["summary"]
    rows = ["## Training", "", f"{short['train']}."]
    if s is not None:
        rate = f" ({s['tokens_per_sec'] / 1e3:.1f}k tokens/s)" if s.get("tokens_per_sec") else ""
        rows[-1] += (f" It ran {s['epochs']} epoch{'' if s['epochs'] == 1 else 's'}, {s['steps']:,} steps, {units.count(s['tokens'])} training "
                     f"tokens in {units.seconds(s['train_seconds'])} of training{rate}; final learning rate "
                     f"{s['lr']:g}; {len(h.rollbacks)} rollbacks.")
    if h.average:
        rows[-1] += (f" Weights were averaged from epoch {h.average['epoch']} (after step {h.average['step']:,}) on: "
                     f"validation and the kept model use their running mean.")
    if not h.epochs:
        return rows + ["", "No epoch was finished.", ""]
    rows += ["", f"| epoch | train ppl | valid ppl ({config.train.eval_batch_size} streams) | lr | |",
             "| ---: | ---: | ---: | ---: | --- |"]
    for e in h.epochs:
        train = units.ppl(_exp(e["train_loss"])) if config.model.loss == "cross_entropy" else "—"
        rows.append(f"| {e['epoch']} | {train} | {units.ppl(e['valid_ppl'])} | {e['lr']:g} | "
                    f"{'kept' if e['accepted'] else 'rejected'} |")
    return rows + [""]


def _exp(loss):
    return None if loss is None else math.exp(min(loss, 700.0))


def _figures(card):
    s = card["summary"]
    skipped = s.get("final_evaluation") == modeldir.FINAL_EVALUATION_SKIPPED
    test = (units.ppl(s["test_ppl"]) if s["test_ppl"] is not None else "not computed" if skipped
            else "no test file")
    note = ([f"The final evaluation was skipped (stopped by a signal): `rnnlm eval {card['out_dir']}` computes the "
             f"test perplexity, `rnnlm eval {card['out_dir']} VALID_FILE` the valid one.", ""] if skipped else [])
    return ["## Figures", "", "Perplexity of the kept model, exact (one stream, batch 1, every target):", "",
            "| | perplexity |", "| --- | ---: |",
            f"| valid | {units.ppl(s['valid_ppl'])} |", f"| test | {test} |",
            f"| unigram baseline (valid) | {units.ppl(s['unigram_valid_ppl'])} |", ""] + note


def _divergence(card):
    d, h = card["diverged"], card["history"]
    best = min((e["valid_ppl"] for e in h.epochs if e["accepted"] and e["valid_ppl"] is not None), default=None)
    best_text = f"; the best valid perplexity between epochs was {units.ppl(best)}" if best is not None else ""
    return ["## Figures", "", f"None exact: training diverged after {len(h.rollbacks)} rollbacks. `weights.npz` "
                              f"holds the model of step {d['kept_step']}{best_text}; `rnnlm eval` on this folder "
                              f"measures it.", ""]


def _reproduce(card):
    sets = "".join(f" --set {k}={_yaml(v)}" for k, v in card["changed"].items())
    init = f" --init {card['init_from']}" if card["init_from"] else ""
    k = card.get("processes", 1)
    launch = f"mpiexec -n {k} " if k > 1 else ""
    return ["## Reproduce", "", "```sh", f"{launch}rnnlm train {card['out_dir']}/config.yaml --out NEW_DIR{sets}{init}",
            "```",
            "", "`config.yaml` holds every setting of this run, the data paths above included (absolute: the same "
                "files must be there, unchanged); the same config, rnnlm, numpy and machine give the same weights."
            + (" The `--set` options are the keys a `--resume` changed (config.yaml keeps the first run's)."
               if sets else "")
            + (f" It ran as {k} data-parallel MPI processes (`mpiexec -n {k}`), which equals one process up to the "
               f"order of float additions." if k > 1 else ""),
            "", "```sh", f"rnnlm eval {card['out_dir']}                # the kept model's test perplexity",
            f"rnnlm sample {card['out_dir']} --words 30", "```"]


def _yaml(value):
    return "null" if value is None else str(value)
