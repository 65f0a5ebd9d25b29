"""`StepAccumulator` combines each slot's pieces once, at `pack`, with the bits of the padded
float64 root-sum-square the old per-call path computed; its cheap shapes (a lone piece, pieces
tiling the step) give those bits too; a float32 overflow is measured again in float64."""

from __future__ import annotations

import torch

from gradwatch.capture.probe import exact_timestep_norms, timestep_norms
from gradwatch.stream import accumulator as accumulator_module
from gradwatch.stream.accumulator import StepAccumulator
from gradwatch.stream.build import ModuleInfo
from gradwatch.stream.schema import IN_ACT, OUT_GRAD, TOTAL_SQ, WEIGHT_SQ, XGRAD, StepLayout

LAYOUT = StepLayout([ModuleInfo("m", "GRU", 1)])
SLOT = LAYOUT.slot(IN_ACT, "m")


def _reference(calls: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
    """Every call's squared norms (float64) zero-padded to the full length, added in call order, rooted."""
    length = max(offset + v.reshape(-1).shape[0] for v, offset in calls)
    total = None
    for v, offset in calls:
        padded = torch.zeros(length, dtype=torch.float64)
        padded[offset : offset + v.reshape(-1).shape[0]] = v.reshape(-1).double().square()
        total = padded if total is None else total + padded
    return total.sqrt()


def _calls(offsets: list[int], seed: int = 0, n: int = 1) -> list[tuple[torch.Tensor, int]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(n, generator=g) * 10 ** float(k % 7 - 3), o) for k, o in enumerate(offsets)]


def _packed(calls: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
    acc = StepAccumulator(LAYOUT)
    for v, offset in calls:
        acc.add_timesteps(SLOT, v.clone(), offset)
    flat, segments = acc.pack([])
    assert segments == [(SLOT, flat.shape[0])]
    return flat


def test_a_decoding_loop_forward_gives_the_bits_of_the_padded_sum():
    calls = _calls(list(range(20)))
    assert torch.equal(_packed(calls), _reference(calls))


def test_a_decoding_loop_backward_last_token_first_gives_the_bits_of_the_padded_sum():
    calls = _calls(list(reversed(range(20))))
    assert torch.equal(_packed(calls), _reference(calls))


def test_a_cells_calls_one_timestep_each_give_the_bits_of_the_padded_sum():
    g = torch.Generator().manual_seed(3)
    calls = [(torch.rand((), generator=g), t) for t in range(6)]
    assert torch.equal(_packed(calls), _reference(calls))


def test_mixed_micro_batches_and_continuations_give_the_bits_of_the_padded_sum():
    g = torch.Generator().manual_seed(1)
    calls = [(torch.rand(5, generator=g), 0), (torch.rand(2, generator=g), 5), (torch.rand(4, generator=g), 0),
             (torch.rand(3, generator=g), 3), (torch.rand(1, generator=g), 9)]
    assert torch.equal(_packed(calls), _reference(calls))


def test_combining_never_writes_into_a_tensor_the_caller_handed_over():
    first = torch.tensor([1.0, 2.0, 3.0])
    acc = StepAccumulator(LAYOUT)
    acc.add_timesteps(SLOT, first)
    acc.add_timesteps(SLOT, torch.tensor([4.0]), 1)
    flat, _ = acc.pack([])
    assert first.tolist() == [1.0, 2.0, 3.0]
    assert flat.tolist() == [1.0, (4.0 + 16.0) ** 0.5, 3.0]


def test_pack_puts_the_step_channels_first_then_the_slots_in_slot_order():
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(7, generator=g), torch.rand(3, generator=g)
    acc = StepAccumulator(LAYOUT)
    out_grad = LAYOUT.slot(OUT_GRAD, "m")
    acc.add_timesteps(out_grad, b)
    acc.add_timesteps(SLOT, a)
    wsq = torch.rand(4, generator=g, dtype=torch.float64)
    scalars = [(LAYOUT.slot(WEIGHT_SQ), wsq), (LAYOUT.slot(TOTAL_SQ), torch.tensor(2.0, dtype=torch.float64))]
    flat, segments = acc.pack(scalars)
    assert flat.dtype == torch.float64
    assert torch.equal(flat, torch.cat([wsq, torch.tensor([2.0], dtype=torch.float64), a.double(), b.double()]))
    assert segments == [(LAYOUT.slot(WEIGHT_SQ), 4), (LAYOUT.slot(TOTAL_SQ), 1), (SLOT, 7), (out_grad, 3)]


def test_a_float32_overflow_is_measured_again_in_float64_at_pack():
    x = torch.full((3, 2, 4), 1e30)  # finite float32 whose squares overflow float32
    acc = StepAccumulator(LAYOUT)
    norms, squared = timestep_norms(x, 0)
    acc.add_timesteps(SLOT, norms, 0, squared=squared, source=x, time_dim=0)
    flat, _ = acc.pack([], remeasure=exact_timestep_norms)
    expected = torch.linalg.vector_norm(x.double(), dim=(1, 2))
    torch.testing.assert_close(flat, expected)
    assert torch.isfinite(flat).all()


def test_a_source_modified_in_place_since_is_not_measured_again():
    x = torch.full((3, 2, 4), 1e30)
    acc = StepAccumulator(LAYOUT)
    norms, _ = timestep_norms(x, 0)
    acc.add_timesteps(SLOT, norms, 0, source=x, time_dim=0)
    x.zero_()  # the user reused the tensor: its old values are gone
    flat, _ = acc.pack([], remeasure=exact_timestep_norms)
    assert torch.equal(flat, norms.double())  # as measured at the time (no made-up value)


def _decoding_loop_backward(acc: StepAccumulator) -> None:
    """A probe step's backward through a 6-token loop: per call, a 1-timestep output and input gradient."""
    g = torch.Generator().manual_seed(4)
    for t in reversed(range(6)):
        acc.add_timesteps(LAYOUT.slot(OUT_GRAD, "m"), torch.rand(1, generator=g), t)
        acc.add_timesteps(LAYOUT.slot(XGRAD, "m", 0), torch.rand(1, generator=g), t)


def test_pack_reuses_the_slots_the_gradient_profiles_combined(monkeypatch):
    """clip="auto" asks for the profiles on probe steps before the update; `pack` at the step's end
    combines those two slots no second time, and gives the bits of an accumulator never asked."""
    plain = StepAccumulator(LAYOUT)
    _decoding_loop_backward(plain)
    expected, expected_segments = plain.pack([])
    combined = []
    real = accumulator_module.combine
    monkeypatch.setattr(accumulator_module, "combine", lambda pieces: combined.append(len(pieces)) or real(pieces))
    acc = StepAccumulator(LAYOUT)
    _decoding_loop_backward(acc)
    [(out_grad, in_grad)] = acc.gradient_profiles()
    flat, segments = acc.pack([])
    assert combined == [6, 6]  # once per slot, at the profiles
    assert torch.equal(flat, expected) and segments == expected_segments
    assert torch.equal(torch.cat([out_grad, in_grad]), expected)  # the profiles are what the buffer holds


def test_a_piece_added_after_the_profiles_is_combined_at_pack():
    acc = StepAccumulator(LAYOUT)
    _decoding_loop_backward(acc)
    acc.gradient_profiles()
    acc.add_timesteps(LAYOUT.slot(OUT_GRAD, "m"), torch.tensor([2.0]), 6)
    later = StepAccumulator(LAYOUT)
    _decoding_loop_backward(later)
    later.add_timesteps(LAYOUT.slot(OUT_GRAD, "m"), torch.tensor([2.0]), 6)
    assert torch.equal(acc.pack([])[0], later.pack([])[0])
