"""Small models shared by the tests."""

from __future__ import annotations

import torch
from torch import nn


class SeqClassifier(nn.Module):
    """Embedding -> recurrent stack -> linear head over the last timestep."""

    def __init__(self, cls=nn.LSTM, vocab=20, emb=8, hidden=16, layers=2, dropout=0.2, **kw):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.rnn = cls(emb, hidden, num_layers=layers, dropout=dropout, **kw)
        ndir = 2 if kw.get("bidirectional") else 1
        self.head = nn.Linear((kw.get("proj_size") or hidden) * ndir, vocab)

    def forward(self, x):
        out, _ = self.rnn(self.emb(x))
        return self.head(out)


class CellDecoder(nn.Module):
    """A hand-unrolled LSTMCell loop, one call per timestep."""

    def __init__(self, inp=4, hidden=6):
        super().__init__()
        self.cell = nn.LSTMCell(inp, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):  # x: (T, B, inp)
        h = c = torch.zeros(x.shape[1], self.cell.hidden_size)
        outs = []
        for t in range(x.shape[0]):
            h, c = self.cell(x[t], (h, c))
            outs.append(self.head(h))
        return torch.stack(outs)


def lm_batch(vocab=20, T=12, B=4):
    x = torch.randint(0, vocab, (T, B))
    return x, torch.roll(x, -1, 0)


def train(model, steps, *, monitor_factory=None, lr=1e-2, opt_cls=torch.optim.Adam, seed=0, feed_loss=True):
    """Train `model` for `steps`; returns (losses, outputs, grads, monitor)."""
    torch.manual_seed(seed)
    opt = opt_cls(model.parameters(), lr=lr)
    monitor = monitor_factory(model, opt) if monitor_factory else None
    losses, outputs, grads = [], [], []
    for _ in range(steps):
        x, y = lm_batch()
        out = model(x)
        loss = nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        opt.step()
        if monitor is not None and feed_loss:
            monitor.step(loss)
        losses.append(loss.detach().clone())
        outputs.append(out.detach().clone())
    return losses, outputs, grads, monitor
