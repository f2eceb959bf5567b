#!/usr/bin/env python3
"""The PyTorch peer of benchmarks/bench.py: rnnlm's model in PyTorch, timed the same way.

Adapted from the reference word_language_model baseline (pytorch/examples, untied weights):
embedding (V, E) -> dropout -> nn.RNN (tanh or relu) / nn.LSTM / nn.GRU (H, L layers, dropout
between layers) -> dropout -> linear H -> V -> full-softmax cross-entropy (dropout as rnnlm's
model.dropout: on the non-recurrent connections); truncated BPTT over `batch` contiguous streams with the hidden state carried and
detached; clip_grad_norm_ then plain SGD (p -= lr * grad). The vocabulary is every word of the
training file plus <eos> (and <unk> when absent), as rnnlm builds it with vocab.min_count = 1.

Run by bench.py as `torch_peer.py --spec JSON` (the same spec its own workers get); prints one
JSON line: training tokens/s, eval tokens/s (batch 1 and batched), peak RSS, torch's GEMM speed
on the model's shapes.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import (cpu_snapshot, cpu_usage, cycle_windows, emit, peak_rss_mb,  # noqa: E402
                   summarize_gemms, time_gemms, time_training)


def read_ids(path, w2i, grow):
    """The token stream of a file (docs/model-directory.md) (<eos>, then each non-empty line's words and <eos>) as an
    int64 tensor; new words get new ids when `grow`, else become <unk>."""
    ids = [w2i.setdefault("<eos>", len(w2i))]
    with open(path, encoding="utf-8") as f:
        for line in f:
            words = line.split()
            if not words:
                continue
            for w in words + ["<eos>"]:
                i = w2i.get(w)
                if i is None:
                    i = w2i.setdefault(w, len(w2i)) if grow else w2i["<unk>"]
                ids.append(i)
    return torch.tensor(ids, dtype=torch.int64)


def batchify(data, bsz):
    """(S,) -> (S // bsz, bsz): bsz contiguous streams, time-major as nn.RNN wants them."""
    nbatch = data.size(0) // bsz
    return data.narrow(0, 0, nbatch * bsz).view(bsz, -1).t().contiguous()


def windows(data, bptt):
    """(inputs, targets) of each bptt window of time-major streams, in order."""
    for i in range(0, data.size(0) - 1, bptt):
        n = min(bptt, data.size(0) - 1 - i)
        yield data[i:i + n], data[i + 1:i + 1 + n]


class RNNLM(nn.Module):
    """Embedding -> nn.RNN/LSTM/GRU -> linear, initialized as pytorch/examples does."""

    def __init__(self, ntoken, emb, hid, nlayers, nonlinearity, cell="elman", dropout=0.0):
        super().__init__()
        self.nlayers, self.hid, self.cell = nlayers, hid, cell
        self.encoder = nn.Embedding(ntoken, emb)
        self.drop = nn.Dropout(dropout)
        between = dropout if nlayers > 1 else 0.0
        if cell == "lstm":
            self.rnn = nn.LSTM(emb, hid, nlayers, dropout=between)
        elif cell == "gru":
            self.rnn = nn.GRU(emb, hid, nlayers, dropout=between)
        else:
            self.rnn = nn.RNN(emb, hid, nlayers, nonlinearity=nonlinearity, dropout=between)
        self.decoder = nn.Linear(hid, ntoken)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, inp, hidden):
        out, hidden = self.rnn(self.drop(self.encoder(inp)), hidden)
        logits = self.decoder(self.drop(out))
        return logits.view(-1, logits.size(-1)), hidden

    def init_hidden(self, bsz):
        zeros = next(self.parameters()).new_zeros(self.nlayers, bsz, self.hid)
        return (zeros, zeros.clone()) if self.cell == "lstm" else zeros


def detach(hidden):
    return tuple(h.detach() for h in hidden) if isinstance(hidden, tuple) else hidden.detach()


def train_stepper(model, spec):
    """step(new_epoch, inputs, targets) -> (loss, targets) for bench.time_training."""
    state = {"hidden": None}
    params = list(model.parameters())

    def step(new_epoch, x, y):
        if new_epoch:
            state["hidden"] = model.init_hidden(spec["batch"])
        model.zero_grad(set_to_none=True)
        logits, hidden = model(x, detach(state["hidden"]))
        loss = F.cross_entropy(logits, y.reshape(-1))
        loss.backward()
        if spec["clip"] is not None:
            torch.nn.utils.clip_grad_norm_(params, spec["clip"])
        with torch.no_grad():
            for p in params:
                p.add_(p.grad, alpha=-spec["lr"])
        state["hidden"] = hidden
        return loss.item(), y.numel()

    return step


def time_eval(model, ids, bsz, bptt, tokens):
    """Evaluate the first `tokens` targets of ids (0 = all) -> dict tok_s, targets, xent."""
    ids = ids[: tokens + 1] if tokens else ids
    data = batchify(ids, bsz)
    model.eval()
    snap = cpu_snapshot()
    total, count = 0.0, 0
    hidden = model.init_hidden(bsz)
    with torch.no_grad():
        for x, y in windows(data, bptt):
            logits, hidden = model(x, hidden)
            total += F.cross_entropy(logits, y.reshape(-1), reduction="sum").item()
            count += y.numel()
    end = cpu_snapshot()
    sec = end[0] - snap[0]
    model.train()
    return {"batch": bsz, "targets": count, "seconds": round(sec, 4), "tok_s": count / sec,
            "xent": total / count, **cpu_usage(snap, end)}


def gemm_speed(spec):
    """torch.matmul's speed on the shapes of one training window (the same list as numpy's)."""
    dtype = getattr(torch, spec["dtype"])

    def operand(rows, cols, transposed):
        a = torch.randn((cols, rows) if transposed else (rows, cols), dtype=dtype)
        return a.t() if transposed else a

    return summarize_gemms(time_gemms(torch.matmul, operand, spec["gemms"], spec["gemm_seconds"]),
                           spec["tokens_per_window"])


def run(spec):
    """Load, train for the spec's time, evaluate with batch 1 and batched; -> the result dict."""
    torch.set_num_threads(spec["threads"])
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(spec["seed"])
    torch.set_default_dtype(getattr(torch, spec["dtype"]))
    t0 = time.perf_counter()
    w2i = {}
    train_ids = read_ids(spec["train_path"], w2i, grow=True)
    w2i.setdefault("<unk>", len(w2i))
    valid_ids = read_ids(spec["valid_path"], w2i, grow=False)
    load_seconds = time.perf_counter() - t0
    model = RNNLM(len(w2i), spec["emb"], spec["hidden"], spec["layers"], spec["activation"],
                  spec.get("cell", "elman"), spec.get("dropout", 0.0))
    rss_loaded = peak_rss_mb()
    train_data = batchify(train_ids, spec["batch"])
    step = train_stepper(model, spec)
    train = time_training(step, cycle_windows(lambda: windows(train_data, spec["bptt"])),
                          spec["warmup"], spec["train_seconds"], spec["train_windows"])
    rss_train = peak_rss_mb()
    eval1 = time_eval(model, valid_ids, 1, spec["bptt"], spec["eval1_tokens"])
    evalb = time_eval(model, valid_ids, spec["eval_batch"], spec["bptt"], spec["evalb_tokens"])
    peak = peak_rss_mb()  # before the GEMM probe's own arrays
    return {"impl": "torch", "torch": torch.__version__, "threads": torch.get_num_threads(),
            "vocab": len(w2i), "params": sum(p.numel() for p in model.parameters()),
            "load_seconds": round(load_seconds, 3), "train": train, "eval1": eval1, "evalb": evalb,
            "rss_loaded_mb": round(rss_loaded, 1), "rss_train_mb": round(rss_train, 1),
            "peak_rss_mb": round(peak, 1), "gemm": gemm_speed(spec)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", required=True, help="the JSON job description bench.py writes")
    emit(run(json.loads(p.parse_args(argv).spec)))


if __name__ == "__main__":
    main()
