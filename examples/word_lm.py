"""A small word-level language model trained the way PyTorch's classic word_language_model
example does it: truncated backpropagation through time, `clip_grad_norm_`, and a manual SGD
update `p.data.add_(p.grad, alpha=-lr)` with no optimizer object.

    $ python examples/word_lm.py --steps 200
    $ gradwatch run examples/word_lm.py --steps 200          # the same, watched, unmodified

The corpus is synthetic (a random Markov chain over a small vocabulary), so nothing is
downloaded. `--log-norms PATH` writes the gradient norm that `clip_grad_norm_` returned at
each step (before clipping), which is what gradwatch records as `grad_norm`.
"""

import argparse
import json
import math

import torch
from torch import nn


class RNNModel(nn.Module):
    """Embedding -> recurrent stack -> linear decoder, as in the PyTorch example."""

    def __init__(self, kind, ntoken, ninp, nhid, nlayers, dropout=0.2):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        if kind in ("LSTM", "GRU"):
            self.rnn = getattr(nn, kind)(ninp, nhid, nlayers, dropout=dropout)
        else:
            self.rnn = nn.RNN(ninp, nhid, nlayers, nonlinearity=kind[4:].lower(), dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        self.kind, self.nhid, self.nlayers = kind, nhid, nlayers

    def forward(self, x, hidden):
        emb = self.drop(self.encoder(x))
        output, hidden = self.rnn(emb, hidden)
        return self.decoder(self.drop(output)), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        zeros = weight.new_zeros(self.nlayers, bsz, self.nhid)
        return (zeros, zeros.clone()) if self.kind == "LSTM" else zeros


def markov_corpus(ntoken, length, generator):
    """A token stream from a random sparse Markov chain (each token has 3 likely successors)."""
    successors = torch.randint(0, ntoken, (ntoken, 3), generator=generator)
    tokens = [0]
    choices = torch.randint(0, 3, (length,), generator=generator)
    noise = torch.rand(length, generator=generator)
    random_tokens = torch.randint(0, ntoken, (length,), generator=generator)
    for i in range(length - 1):
        nxt = random_tokens[i] if noise[i] < 0.1 else successors[tokens[-1], choices[i]]
        tokens.append(int(nxt))
    return torch.tensor(tokens)


def batchify(data, bsz):
    nbatch = data.size(0) // bsz
    return data[: nbatch * bsz].view(bsz, -1).t().contiguous()


def repackage_hidden(h):
    return h.detach() if isinstance(h, torch.Tensor) else tuple(repackage_hidden(v) for v in h)


def get_batch(source, i, bptt):
    seq_len = min(bptt, len(source) - 1 - i)
    return source[i : i + seq_len], source[i + 1 : i + 1 + seq_len].reshape(-1)


def evaluate(model, data, bptt, criterion, ntoken):
    model.eval()
    total, hidden = 0.0, model.init_hidden(data.size(1))
    with torch.no_grad():
        for i in range(0, data.size(0) - 1, bptt):
            x, y = get_batch(data, i, bptt)
            output, hidden = model(x, hidden)
            total += len(x) * criterion(output.view(-1, ntoken), y).item()
    return total / (len(data) - 1)


def main():
    parser = argparse.ArgumentParser(description="Word-level LM with manual SGD updates (synthetic corpus).")
    parser.add_argument("--model", default="LSTM", choices=["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
    parser.add_argument("--ntoken", type=int, default=50)
    parser.add_argument("--emsize", type=int, default=32)
    parser.add_argument("--nhid", type=int, default=32)
    parser.add_argument("--nlayers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5.0)
    parser.add_argument("--clip", type=float, default=0.25)
    parser.add_argument("--bptt", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200, help="training steps (one per bptt chunk)")
    parser.add_argument("--eval-every", type=int, default=50, help="evaluate on held-out text every N steps")
    parser.add_argument("--seed", type=int, default=1111)
    parser.add_argument("--log-norms", default=None, help="write clip_grad_norm_'s return value per step (JSON)")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    corpus = markov_corpus(args.ntoken, 20000, generator)
    train_data = batchify(corpus[:18000], args.batch_size)
    val_data = batchify(corpus[18000:], 4)
    model = RNNModel(args.model, args.ntoken, args.emsize, args.nhid, args.nlayers)
    criterion = nn.CrossEntropyLoss()
    lr, norms, step = args.lr, [], 0
    hidden = model.init_hidden(args.batch_size)
    while step < args.steps:
        model.train()
        for i in range(0, train_data.size(0) - 1, args.bptt):
            if step >= args.steps:
                break
            data, targets = get_batch(train_data, i, args.bptt)
            hidden = repackage_hidden(hidden)
            model.zero_grad()
            output, hidden = model(data, hidden)
            loss = criterion(output.view(-1, args.ntoken), targets)
            loss.backward()
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)))
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-lr)
            step += 1
            if step % 25 == 0:
                print(f"| step {step:4d} | lr {lr:.2f} | loss {loss.item():5.2f} | ppl {math.exp(loss.item()):7.2f}")
            if args.eval_every and step % args.eval_every == 0:
                val_loss = evaluate(model, val_data, args.bptt, criterion, args.ntoken)
                print(f"| eval at step {step:4d} | valid loss {val_loss:5.2f}")
                model.train()
    if args.log_norms:
        with open(args.log_norms, "w") as f:
            json.dump(norms, f)
    print(f"done: {step} steps")


if __name__ == "__main__":
    main()
