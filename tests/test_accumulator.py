"""`StepAccumulator`'s cheap paths (append, add in place, one sqrt in `pack`) give the bits of the
padded sums and per-segment square roots they replace."""

from __future__ import annotations

import torch

from gradwatch.stream.accumulator import StepAccumulator


def _padded_sum(calls: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
    """Reference: every call zero-padded to the full length, then added in call order."""
    length = max(offset + v.shape[0] for v, offset in calls)
    total = None
    for v, offset in calls:
        padded = torch.zeros(length, dtype=v.dtype)
        padded[offset : offset + v.shape[0]] = v
        total = padded if total is None else total + padded
    return total


def _calls(offsets: list[int], seed: int = 0) -> list[tuple[torch.Tensor, int]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(1, generator=g, dtype=torch.float64) * 10 ** float(k % 7 - 3), o) for k, o in enumerate(offsets)]


def _accumulated(calls: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
    acc = StepAccumulator()
    for v, offset in calls:
        acc.add_timesteps("k", v.clone(), offset)
    return acc.vectors["k"]


def test_a_decoding_loop_forward_appends_with_the_bits_of_the_padded_sum():
    calls = _calls(list(range(20)))
    assert torch.equal(_accumulated(calls), _padded_sum(calls))


def test_a_decoding_loop_backward_adds_in_place_with_the_bits_of_the_padded_sum():
    calls = _calls(list(reversed(range(20))))  # the output-gradient hooks fire last token first
    assert torch.equal(_accumulated(calls), _padded_sum(calls))


def test_mixed_micro_batches_and_continuations_give_the_bits_of_the_padded_sum():
    g = torch.Generator().manual_seed(1)
    calls = [(torch.rand(5, generator=g, dtype=torch.float64), 0), (torch.rand(2, generator=g, dtype=torch.float64), 5),
             (torch.rand(4, generator=g, dtype=torch.float64), 0), (torch.rand(3, generator=g, dtype=torch.float64), 3),
             (torch.rand(1, generator=g, dtype=torch.float64), 9)]
    assert torch.equal(_accumulated(calls), _padded_sum(calls))


def test_adding_in_place_never_writes_into_a_tensor_the_caller_handed_over():
    acc = StepAccumulator()
    first = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    acc.add_timesteps("k", first)
    acc.add_timesteps("k", torch.tensor([5.0], dtype=torch.float64), 1)
    assert first.tolist() == [1.0, 2.0, 3.0]
    assert acc.vectors["k"].tolist() == [1.0, 7.0, 3.0]


def test_pack_takes_one_square_root_with_the_bits_of_one_per_segment():
    acc = StepAccumulator()
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(7, generator=g, dtype=torch.float64), torch.rand(3, generator=g, dtype=torch.float64)
    acc.add_timesteps(("in_act", "m"), a)
    acc.add_timesteps(("out_grad", "m"), b)
    scalars = {("wsq",): torch.rand(4, generator=g, dtype=torch.float64), ("total",): torch.tensor(2.0)}
    flat, layout = acc.pack(scalars)
    expected = torch.cat([scalars[("wsq",)], scalars[("total",)].double().reshape(1), a.sqrt(), b.sqrt()])
    assert torch.equal(flat, expected)
    assert layout == [(("wsq",), 4), (("total",), 1), (("in_act", "m"), 7), (("out_grad", "m"), 3)]
