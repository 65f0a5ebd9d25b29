"""CPU time of gradwatch's end-of-step code on a word-LM-shaped model (big embedding and decoder).

    PYTHONPATH=. python benchmarks/end_of_step_lm.py      # run it from two trees, interleaved, to compare

The embedding and decoder (4M parameters outside the watched LSTM) are what the per-step
non-finite check of non-watched weights reads (issue 12). Reported: medians over 10-step blocks
(the first 2 warm up) of the thread CPU time per step in the monitor's end-of-step entry points,
and of the whole training step, with one torch thread.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

import gradwatch
from gradwatch.monitor import Monitor

from hook_time import TIMED, _timed  # the end-of-step entry points and their CPU-time wrapper


class WordLM(nn.Module):
    def __init__(self, vocab: int = 10000, emb: int = 200, hidden: int = 200) -> None:
        super().__init__()
        self.emb, self.rnn, self.dec = nn.Embedding(vocab, emb), nn.LSTM(emb, hidden, 2), nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(self.rnn(self.emb(x))[0])


def measure(blocks: int = 12, block: int = 10) -> tuple[float, float]:
    """(median µs per step in gradwatch's end-of-step code, median µs per whole step)."""
    torch.manual_seed(0)
    model = WordLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randint(0, 10000, (35, 20)), torch.randint(0, 10000, (35, 20))
    spent = [0]
    originals = {name: getattr(Monitor, name) for name in TIMED}
    hooks, steps = [], []
    try:
        for name, fn in originals.items():
            setattr(Monitor, name, _timed(fn, spent))
        monitor = gradwatch.watch(model, opt, console=False)
        for _ in range(blocks):
            spent[0], start = 0, time.thread_time_ns()
            for _ in range(block):
                loss = nn.functional.cross_entropy(model(x).reshape(-1, 10000), y.reshape(-1))
                opt.zero_grad()
                loss.backward()
                opt.step()
                monitor.step(loss)
            hooks.append(spent[0] / block / 1e3)
            steps.append((time.thread_time_ns() - start) / block / 1e3)
        monitor.close()
    finally:
        for name, fn in originals.items():
            setattr(Monitor, name, fn)
    return statistics.median(hooks[2:]), statistics.median(steps[2:])


if __name__ == "__main__":
    torch.set_num_threads(1)
    hook_us, step_us = measure()
    print(f"end-of-step {hook_us:.0f} µs, whole step {step_us:.0f} µs (torch {torch.__version__}, 1 thread)")
