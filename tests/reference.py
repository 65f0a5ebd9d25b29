"""Independent references for the tests: plain autograd, one layer at a time, retain_grad()."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence


def single_layer_copy(m: nn.Module, layer: int) -> nn.Module:
    """A one-layer module of the same type holding layer `layer`'s parameters of `m`."""
    ndir = 2 if m.bidirectional else 1
    out_size = m.proj_size if getattr(m, "proj_size", 0) else m.hidden_size
    in_size = m.input_size if layer == 0 else out_size * ndir
    kwargs = dict(num_layers=1, bias=m.bias, batch_first=m.batch_first, bidirectional=m.bidirectional)
    if isinstance(m, nn.LSTM):
        ref = nn.LSTM(in_size, m.hidden_size, proj_size=m.proj_size, **kwargs)
    elif isinstance(m, nn.GRU):
        ref = nn.GRU(in_size, m.hidden_size, **kwargs)
    else:
        ref = nn.RNN(in_size, m.hidden_size, nonlinearity=m.nonlinearity, **kwargs)
    weight = getattr(m, "weight_ih_l0")
    ref.to(device=weight.device, dtype=weight.dtype)  # a CUDA module gets a CUDA reference
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(getattr(m, name.replace("_l0", f"_l{layer}")))
    ref.train(m.training)
    return ref


def per_timestep_norms(grad, like, batch_first: bool) -> list[float]:
    """‖grad_t‖₂ over batch and features, for a padded tensor or a packed sequence's data."""
    if isinstance(like, PackedSequence):
        padded, _ = pad_packed_sequence(PackedSequence(grad, like.batch_sizes, like.sorted_indices, like.unsorted_indices))
        return padded.pow(2).sum(dim=(1, 2)).sqrt().tolist()
    if grad.dim() == 2:
        return grad.pow(2).sum(dim=1).sqrt().tolist()
    dims = (0, 2) if batch_first else (1, 2)
    return grad.pow(2).sum(dim=dims).sqrt().tolist()


def reference_timestep_grads(m: nn.Module, x, hx, loss_fn, seed: int | None = None) -> list[list[float]]:
    """Run `m`'s layers one by one as separate modules and return ‖∂L/∂x_t^(l)‖ per layer.

    `seed` seeds the RNG right before the forward pass (inter-layer dropout masks).
    """
    ndir = 2 if m.bidirectional else 1
    refs = [single_layer_copy(m, layer) for layer in range(m.num_layers)]
    if seed is not None:
        torch.manual_seed(seed)
    inputs, finals = [], []
    cur = x
    for layer, ref in enumerate(refs):
        if isinstance(cur, PackedSequence):
            data = cur.data.detach().requires_grad_() if layer == 0 else cur.data
            if layer > 0:
                data.retain_grad()
            cur = PackedSequence(data, cur.batch_sizes, cur.sorted_indices, cur.unsorted_indices)
            inputs.append((data, cur))
        else:
            data = cur.detach().requires_grad_() if layer == 0 else cur
            if layer > 0:
                data.retain_grad()
            cur = data
            inputs.append((data, cur))
        rows = slice(layer * ndir, (layer + 1) * ndir)
        h0 = None
        if hx is not None:
            h0 = (hx[0][rows], hx[1][rows]) if isinstance(m, nn.LSTM) else hx[rows]
        out, h = ref(cur, h0)
        finals.append(h)
        if m.dropout and m.training and layer < m.num_layers - 1:
            if isinstance(out, PackedSequence):
                out = PackedSequence(torch.nn.functional.dropout(out.data, m.dropout, True), out.batch_sizes,
                                     out.sorted_indices, out.unsorted_indices)
            else:
                out = torch.nn.functional.dropout(out, m.dropout, True)
        cur = out
    if isinstance(m, nn.LSTM):
        hidden = (torch.cat([f[0] for f in finals]), torch.cat([f[1] for f in finals]))
    else:
        hidden = torch.cat(finals)
    loss_fn(cur, hidden).backward()
    return [per_timestep_norms(d.grad, c, m.batch_first) for d, c in inputs]
