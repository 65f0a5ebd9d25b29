"""Real training loops that watching must neither break nor mislead (issue 12, capture side).

Each test is named after the bug it pins; each compares with the unwatched run bit for bit and,
where gradwatch reports a number, with an independent reference (plain autograd).
"""

from __future__ import annotations

import copy
import io
import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn.utils.prune  # noqa: F401  (nn.utils.prune is a submodule torch does not import)
from torch import nn
from torch.nn import functional as F

import gradwatch
from models import SeqClassifier
from reference import per_timestep_norms, reference_timestep_grads


@pytest.fixture(autouse=True)
def no_internal_failure(caplog):
    """With default options (strict=False) an internal failure is only logged: fail the test on it."""
    yield
    failures = [r.getMessage() for r in caplog.records if r.name == "gradwatch" and "failed (" in r.getMessage()]
    assert not failures


def train(make, body, *, steps=3, watch=True, every=1, lr=0.1):
    """Run `body(model, step) -> loss` for `steps` SGD steps; returns (losses, parameters, monitor)."""
    torch.manual_seed(0)
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    mon = gradwatch.watch(model, opt, every=every, console=False) if watch else None
    losses = []
    for step in range(steps):
        torch.manual_seed(100 + step)
        loss = body(model, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if mon is not None:
            mon.step(loss)
        losses.append(loss.detach().clone())
    params = [p.detach().clone() for p in model.parameters()]
    if mon is not None:
        mon.close()
    return losses, params, mon


def assert_training_unchanged(make, body, **kw):
    """Watched training is bitwise identical to unwatched; returns the watched run's monitor."""
    plain_losses, plain_params, _ = train(make, body, watch=False, **kw)
    losses, params, mon = train(make, body, **kw)
    assert all(torch.equal(a, b) for a, b in zip(plain_losses, losses))
    assert all(torch.equal(a, b) for a, b in zip(plain_params, params))
    return mon


def assert_norms(got, expected):
    assert got is not None
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# 1. in-place ops on a watched module's output

def _masked_fill(out):
    out.masked_fill_(out > 0.5, 0.0)


def _add_skip(out):
    out += torch.ones_like(out)


def _relu_inplace(out):
    F.relu(out, inplace=True)


def _zero_timestep(out):
    out[1] = 0


INPLACE_OPS = [_masked_fill, _add_skip, _relu_inplace, _zero_timestep]
STACKS = [(nn.GRU, torch.float32), (nn.RNN, torch.float32), (nn.LSTM, torch.float64)]


def _apply_and_loss(op):
    def loss_fn(out, hidden):
        out = out.clone()  # the reference applies the op to a copy: same gradient at the module output
        op(out)
        return out.square().mean()
    return loss_fn


@pytest.mark.parametrize("op", INPLACE_OPS, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("cls,dtype", STACKS, ids=["gru", "rnn", "lstm-float64"])
def test_inplace_op_on_watched_rnn_output_is_not_a_probe_view_error(cls, dtype, op):
    make = lambda: cls(4, 5, num_layers=2).to(dtype)  # noqa: E731

    def body(model, step):
        out, _ = model(torch.randn(6, 3, 4, dtype=dtype))
        op(out)
        return out.square().mean()

    assert_training_unchanged(make, body)
    # exact per-timestep norms, against plain autograd on an unwatched copy
    torch.manual_seed(1)
    model = make()
    reference = copy.deepcopy(model)
    x = torch.randn(6, 3, 4, dtype=dtype)
    with gradwatch.watch(model, every=1, console=False) as mon:
        body_out, _ = model(x)
        op(body_out)
        body_out.square().mean().backward()
        mon.step()
    record = mon.history[0]
    expected = reference_timestep_grads(reference, x, None, _apply_and_loss(op))
    for layer in range(2):
        assert_norms(record.layers[("", layer)].timestep_grad_norms, expected[layer])
    out, _ = reference(x)
    (grad,) = torch.autograd.grad(_apply_and_loss(op)(out, None), out)
    assert_norms(record.timestep_output_grad_norms[""], per_timestep_norms(grad, out, False))


class _GRUCellLoop(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = nn.GRUCell(4, 5)

    def forward(self, x, op):
        h = torch.zeros(x.shape[1], 5, dtype=x.dtype)
        outs = []
        for t in range(x.shape[0]):
            h = self.cell(x[t], h)
            y = h * 1.0 if op is None else h
            if op is not None:
                h = h.clone()  # the next step reads an unmodified state; `y` is modified in place
                op(y.unsqueeze(0))
            outs.append(y)
        return torch.stack(outs)


@pytest.mark.parametrize("op", [_masked_fill, _add_skip, _relu_inplace], ids=lambda f: f.__name__.strip("_"))
def test_inplace_op_on_watched_cell_output_is_not_a_probe_view_error(op):
    def body(model, step):
        return model(torch.randn(5, 3, 4), op).square().mean()

    mon = assert_training_unchanged(_GRUCellLoop, body)
    assert len(mon.history[0].timestep_output_grad_norms["cell"]) == 5


# ---------------------------------------------------------------------------------------------
# 2. activation checkpointing

@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
@pytest.mark.parametrize("every", [1, 2], ids=["probe", "probe-every-2"])
def test_activation_checkpointing_of_a_watched_lstm_runs_and_measures_once(reentrant, every):
    from torch.utils.checkpoint import checkpoint

    make = lambda: nn.LSTM(4, 5, num_layers=2, dropout=0.3)  # noqa: E731

    def body(model, step):
        x = torch.randn(6, 3, 4, requires_grad=True)
        out, _ = checkpoint(model, x, use_reentrant=reentrant)
        return out.square().mean()

    mon = assert_training_unchanged(make, body, every=every)
    # the numbers, against plain autograd (without dropout, whose masks the reference would redraw)
    torch.manual_seed(0)
    model = nn.LSTM(4, 5, num_layers=2)
    reference = copy.deepcopy(model)
    x = torch.randn(6, 3, 4, requires_grad=True)
    with gradwatch.watch(model, every=1, console=False) as mon:
        out, _ = checkpoint(model, x, use_reentrant=reentrant)
        out.square().mean().backward()
        mon.step()
    expected = reference_timestep_grads(reference, x, None, lambda o, h: o.square().mean())
    for layer in range(2):
        assert_norms(mon.history[0].layers[("", layer)].timestep_grad_norms, expected[layer])
    assert len(mon.history[0].timestep_output_grad_norms[""]) == 6  # measured once, not twice


def test_checkpointing_a_module_in_eval_mode_recomputes_the_same_path():
    """An eval-mode forward is not measured; its recomputation must not take the probe path either."""
    from torch.utils.checkpoint import checkpoint

    def body(model, step):
        out, _ = checkpoint(model, torch.randn(6, 3, 4, requires_grad=True), use_reentrant=False)
        return out.square().mean()

    assert_training_unchanged(lambda: nn.LSTM(4, 5, num_layers=2).eval(), body)


# ---------------------------------------------------------------------------------------------
# 4. saving a whole watched model

def test_pickle_of_a_watched_model_names_no_gradwatch_object():
    torch.manual_seed(0)
    model = SeqClassifier(nn.LSTM)
    unwatched = pickle.dumps(model)
    with gradwatch.watch(model, console=False):
        watched = pickle.dumps(model)
        saved = io.BytesIO()
        torch.save(model, saved)
    assert b"gradwatch" not in watched
    assert watched == unwatched
    assert b"gradwatch" not in saved.getvalue()


def test_pickle_of_a_model_trained_while_watched_equals_the_unwatched_runs():
    def body(model, step):
        return model(torch.randint(0, 20, (7, 3))).square().mean()

    def make():
        torch.manual_seed(0)
        return SeqClassifier(nn.LSTM)

    plain, watched = make(), make()
    for model, watch in ((plain, False), (watched, True)):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        mon = gradwatch.watch(model, opt, every=1, console=False) if watch else None
        for step in range(2):
            torch.manual_seed(step)
            opt.zero_grad()
            body(model, step).backward()
            opt.step()
        if watch:  # while still watched: torch.save names storages by ordinal, so the archives compare
            saved_watched, saved_plain = io.BytesIO(), io.BytesIO()
            torch.save(model, saved_watched)
            torch.save(plain, saved_plain)
            mon.close()
            assert saved_watched.getvalue() == saved_plain.getvalue()


def test_torch_save_of_a_watched_model_loads_with_weights_only_allowlist():
    torch.manual_seed(0)
    model = SeqClassifier(nn.GRU)
    mon = gradwatch.watch(model, console=False)
    saved = io.BytesIO()
    torch.save(model, saved)
    mon.close()
    saved.seek(0)
    allow = [SeqClassifier, nn.Embedding, nn.GRU, nn.Linear]
    with torch.serialization.safe_globals(allow):
        loaded = torch.load(saved)  # weights_only=True by default
    x = torch.randint(0, 20, (5, 2))
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x), rtol=0, atol=0)
    assert "forward" not in loaded.rnn.__dict__


def test_watched_model_saved_with_torch_save_loads_in_a_process_without_gradwatch(tmp_path):
    model = nn.Sequential(nn.LSTM(3, 4))
    with gradwatch.watch(model, console=False):
        torch.save(model, tmp_path / "m.pt")
    code = (
        "import sys; sys.modules['gradwatch'] = None\n"  # any import of gradwatch fails
        "import torch\n"
        f"m = torch.load({str(tmp_path / 'm.pt')!r}, weights_only=False)\n"
        "print(type(m[0]).__name__, sorted(k for k in m[0].__dict__ if k in ('forward', '__getstate__')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "LSTM []"


# ---------------------------------------------------------------------------------------------
# 5. reparametrised weights and extra parameters: per-layer gradient norms

class WeightDropLSTM(nn.Module):
    """AWD-LSTM's WeightDrop pattern: `weight_hh_l1_raw` is the Parameter, `weight_hh_l1` a tensor
    recomputed (with DropConnect) before every forward."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 5, num_layers=2)
        raw = self.lstm.weight_hh_l1
        del self.lstm._parameters["weight_hh_l1"]
        self.lstm.register_parameter("weight_hh_l1_raw", nn.Parameter(raw.detach().clone()))
        self.lstm.weight_hh_l1 = raw.detach().clone()

    def forward(self, x):
        self.lstm.weight_hh_l1 = F.dropout(self.lstm.weight_hh_l1_raw, 0.3, self.training)
        return self.lstm(x)


class ScaledLSTM(nn.LSTM):
    """An RNN subclass with an extra Parameter that belongs to no layer."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.out_scale = nn.Parameter(torch.full((), 1.5))

    def forward(self, x, hx=None):
        out, h = super().forward(x, hx)
        return out * self.out_scale, h


def _weight_norm_new():
    m = nn.LSTM(4, 5, num_layers=2)
    nn.utils.parametrizations.weight_norm(m, "weight_hh_l1")
    return m


def _weight_norm_legacy():
    m = nn.LSTM(4, 5, num_layers=2)
    with pytest.warns(FutureWarning):
        nn.utils.weight_norm(m, "weight_hh_l1")
    return m


def _pruned():
    m = nn.LSTM(4, 5, num_layers=2)
    nn.utils.prune.l1_unstructured(m, "weight_hh_l1", amount=0.3)
    nn.utils.prune.l1_unstructured(m, "weight_ih_l0", amount=0.3)
    return m


REPARAMETRISED = {
    "parametrizations-weight_norm": _weight_norm_new,
    "legacy-weight_norm": _weight_norm_legacy,
    "prune": _pruned,
    "awd-weightdrop": WeightDropLSTM,
    "subclass-extra-parameter": lambda: ScaledLSTM(4, 5, num_layers=2),
}


def _true_layer(name: str) -> int | None:
    """Written by hand for these models: the layer a parameter feeds, from the `_l<k>` in its name."""
    if "out_scale" in name:
        return None
    return 1 if "_l1" in name else 0


@pytest.mark.parametrize("make", REPARAMETRISED.values(), ids=REPARAMETRISED.keys())
def test_reparametrised_weights_count_toward_their_own_layer(make):
    def body(model, step):
        out, _ = model(torch.randn(6, 3, 4))
        return out.square().mean()

    assert_training_unchanged(make, body)
    torch.manual_seed(0)
    model = make()
    with gradwatch.watch(model, every=1, console=False) as mon:
        body(model, 0).backward()
        mon.step()
    expected = {0: 0.0, 1: 0.0}
    for name, p in model.named_parameters():
        if _true_layer(name) is not None and p.grad is not None:
            expected[_true_layer(name)] += p.grad.double().square().sum().item()
    module = "lstm" if isinstance(model, WeightDropLSTM) else ""
    for layer in (0, 1):
        got = mon.history[0].layers[(module, layer)].grad_norm
        assert got == pytest.approx(expected[layer] ** 0.5, rel=1e-6)


def test_extra_parameter_of_an_rnn_subclass_is_named_once_in_a_warning(caplog):
    model = ScaledLSTM(4, 5, num_layers=2)
    with gradwatch.watch(model, every=1, console=False) as mon:
        for _ in range(2):
            model(torch.randn(6, 3, 4))[0].sum().backward()
            mon.step()
    said = [r.getMessage() for r in caplog.records if "out_scale" in r.getMessage()]
    assert len(said) == 1 and "no layer" in said[0]


# ---------------------------------------------------------------------------------------------
# 6. parameters replaced after watch()

def test_load_state_dict_assign_after_watch_keeps_layer_gradients():
    torch.manual_seed(0)
    model = nn.LSTM(4, 5, num_layers=2)
    replacement = {k: v.clone() * 0.5 for k, v in nn.LSTM(4, 5, num_layers=2).state_dict().items()}
    with gradwatch.watch(model, every=1, console=False) as mon:
        for step in range(3):
            if step == 1:
                model.load_state_dict(replacement, assign=True)
            model.zero_grad()
            model(torch.randn(6, 3, 4))[0].square().mean().backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.1 * p.grad
            mon.step()
            record = mon.history[-1] if len(mon.history) == step + 1 else None
    for step in (1, 2):
        record = mon.history[step]
        assert all(layer.has_grad for layer in record.layers.values())
    expected = [sum(p.grad.double().square().sum().item() for n, p in model.named_parameters() if f"_l{layer}" in n)
                for layer in (0, 1)]
    for layer in (0, 1):
        assert mon.history[2].layers[("", layer)].grad_norm == pytest.approx(expected[layer] ** 0.5, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# 7. validation forwards with gradients on

def test_eval_mode_validation_forward_without_no_grad_is_not_counted_as_training():
    def body(model, step):
        model.eval()
        bad = torch.randn(6, 3, 4)
        bad[2, 1, 0] = float("nan")
        model(bad)  # validation, gradients on, never back-propagated
        model.train()
        return model(torch.randn(6, 3, 4))[0].square().mean()

    def body_without_validation(model, step):
        torch.randn(6, 3, 4)  # the same random draws as `body`
        return model(torch.randn(6, 3, 4))[0].square().mean()

    make = lambda: nn.GRU(4, 5, num_layers=2)  # noqa: E731
    mon = assert_training_unchanged(make, body)
    _, _, clean = train(make, body_without_validation)
    for got, want in zip(mon.history, clean.history):
        assert got.nonfinite is None
        assert got.layers[("", 1)].timestep_grad_norms == want.layers[("", 1)].timestep_grad_norms
        assert got.layers[("", 0)].dead_fraction == want.layers[("", 0)].dead_fraction


def test_training_in_eval_mode_says_once_that_activations_are_not_measured(caplog):
    model = nn.GRU(4, 5).eval()
    with gradwatch.watch(model, every=1, console=False) as mon:
        for _ in range(3):
            model(torch.randn(6, 3, 4))[0].sum().backward()
            mon.step()
    said = [r.getMessage() for r in caplog.records if "eval mode" in r.getMessage()]
    assert len(said) == 1
    assert mon.history[0].layers[("", 0)].grad_norm > 0


# ---------------------------------------------------------------------------------------------
# 8. one odd call must not switch capture off for good

def _probe_step_matches_reference(mon, model_copy, x, step_index):
    expected = reference_timestep_grads(model_copy, x, None, lambda o, h: o.square().mean())
    for layer in range(model_copy.num_layers):
        assert_norms(mon.history[step_index].layers[("", layer)].timestep_grad_norms, expected[layer])


@pytest.mark.parametrize("odd", ["empty-batch", "torch.func.grad"])
def test_one_empty_batch_or_func_grad_call_does_not_switch_capture_off(odd):
    torch.manual_seed(0)
    model = nn.LSTM(4, 5, num_layers=2)
    with gradwatch.watch(model, every=1, console=False) as mon:
        if odd == "empty-batch":
            model(torch.randn(6, 0, 4))[0].square().sum().backward()
        else:
            params = dict(model.named_parameters())
            x0 = torch.randn(6, 3, 4)
            torch.func.grad(lambda p: torch.func.functional_call(model, p, (x0,))[0].square().mean())(params)
        mon.step()
        x = torch.randn(6, 3, 4)
        reference = copy.deepcopy(model)
        model.zero_grad()
        model(x)[0].square().mean().backward()
        mon.step()
    _probe_step_matches_reference(mon, reference, x, 1)


# ---------------------------------------------------------------------------------------------
# 10. weights shared between two watched modules

class TiedEncoderDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.GRU(4, 5)
        self.decoder = nn.GRU(4, 5)
        self.decoder.weight_hh_l0 = self.encoder.weight_hh_l0

    def forward(self, x):
        _, h = self.encoder(x)
        return self.decoder(x, h)[0]


def test_weights_shared_between_two_rnn_modules_are_named_in_a_warning(caplog):
    model = TiedEncoderDecoder()
    with gradwatch.watch(model, every=1, console=False) as mon:
        model(torch.randn(6, 3, 4)).square().mean().backward()
        mon.step()
    said = [r.getMessage() for r in caplog.records if "shared" in r.getMessage()]
    assert len(said) == 1 and "decoder.weight_hh_l0" in said[0] and "encoder.weight_hh_l0" in said[0]
    # the shared tensor's full gradient (both uses) counts toward the encoder, as said
    enc = [p for n, p in model.encoder.named_parameters()]
    expected = sum(p.grad.double().square().sum().item() for p in enc) ** 0.5
    assert mon.history[0].layers[("encoder", 0)].grad_norm == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# 11. where a NaN/Inf appeared

def _overflowing_middle_layer(bidirectional):
    """A 3-layer ReLU RNN whose layer 1 overflows to Inf (finite weights, finite input)."""
    torch.manual_seed(0)
    m = nn.RNN(4, 5, num_layers=3, nonlinearity="relu", bidirectional=bidirectional)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("weight") and "_l1" in name:
                p.fill_(1e15)  # h grows ×~1e16 per timestep: Inf (float32) from t=2 on
    return m


@pytest.mark.parametrize("bidirectional", [False, True], ids=["unidirectional", "bidirectional"])
@pytest.mark.parametrize("every", [1, 10], ids=["probe-step", "non-probe-step"])
def test_nan_born_in_a_middle_layer_of_a_fused_stack_names_that_layer_on_every_step(every, bidirectional):
    model = _overflowing_middle_layer(bidirectional)
    with gradwatch.watch(model, every=every, console=False) as mon:
        for _ in range(2):
            model(torch.rand(6, 3, 4))[0].sum().backward()
            mon.step()
    for record in mon.history:
        assert record.nonfinite is not None
        assert (record.nonfinite.where, record.nonfinite.module, record.nonfinite.layer) == ("forward", "", 1)


def test_inf_row_in_an_embedding_weight_is_diagnosed_as_weights_not_input_data():
    torch.manual_seed(0)
    model = SeqClassifier(nn.LSTM)
    with torch.no_grad():
        model.emb.weight[3] = float("inf")
    x = torch.full((5, 2), 3)
    with gradwatch.watch(model, every=10, console=False) as mon:
        model(x).sum().backward()
        mon.step()
    nf = mon.history[0].nonfinite
    assert (nf.where, nf.module, nf.layer) == ("weights", "emb", None)
    alert = [a for a in mon.alerts if a.sign == "non_finite"][0]
    assert "data pipeline" not in alert.message


# ---------------------------------------------------------------------------------------------
# 9. a fused module called once per token; LBFGS closures

def _decode(model, x, h=None):
    """The seq2seq tutorial's decoder loop: one token per call, the returned state fed back."""
    dim = 1 if model.batch_first else 0
    outs = []
    for t in range(x.shape[dim]):
        out, h = model(x.narrow(dim, t, 1), h)
        outs.append(out)
    return torch.cat(outs, dim)


@pytest.mark.parametrize("batch_first", [False, True], ids=["time-first", "batch-first"])
def test_fused_gru_called_once_per_token_is_measured_as_timesteps(batch_first):
    shape = (3, 5, 4) if batch_first else (5, 3, 4)

    def body(model, step):
        return _decode(model, torch.randn(*shape)).square().mean()

    make = lambda: nn.GRU(4, 5, batch_first=batch_first)  # noqa: E731
    assert_training_unchanged(make, body)
    torch.manual_seed(0)
    model = make()
    reference = copy.deepcopy(model)
    x = torch.randn(*shape, requires_grad=True)
    with gradwatch.watch(model, every=1, console=False) as mon:
        _decode(model, x).square().mean().backward()
        mon.step()
    dim = 1 if batch_first else 0
    x_ref = x.detach().clone().requires_grad_()
    outs, h = [], None
    for t in range(5):
        out, h = reference(x_ref.narrow(dim, t, 1), h)
        outs.append(out)
    grads = torch.autograd.grad(torch.cat(outs, dim).square().mean(), outs + [x_ref])
    record = mon.history[0]
    assert_norms(record.timestep_output_grad_norms[""], [g.square().sum().sqrt().item() for g in grads[:5]])
    assert_norms(record.layers[("", 0)].timestep_grad_norms, per_timestep_norms(grads[5], x_ref, batch_first))
    assert_norms(record.layers[("", 0)].timestep_activation_norms, [o.square().sum().sqrt().item() for o in outs])


def test_independent_calls_in_one_step_still_add_up_per_timestep():
    """Accumulated micro-batches (fresh initial state each) stay aligned at t=0: not a decoding loop."""
    torch.manual_seed(0)
    model = nn.GRU(4, 5)
    with gradwatch.watch(model, every=1, console=False) as mon:
        for _ in range(2):
            model(torch.randn(6, 3, 4))[0].sum().backward()
        mon.step()
    assert len(mon.history[0].timestep_output_grad_norms[""]) == 6


def _lbfgs_run(model, x, watch, evaluations):
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
    mon = gradwatch.watch(model, opt, every=1, console=False) if watch else None

    def closure():
        opt.zero_grad()
        loss = model(x)[0].square().mean()
        loss.backward()
        if watch:  # the reference for this evaluation, on an unwatched copy at the same parameters
            evaluations.append(reference_timestep_grads(copy.deepcopy(model), x, None,
                                                        lambda o, h: o.square().mean()))
        return loss

    for _ in range(2):
        opt.step(closure)
        if mon is not None:
            mon.step()
    if mon is not None:
        mon.close()
    return [p.detach().clone() for p in model.parameters()], mon


def test_lbfgs_closure_evaluations_do_not_concatenate_or_add_up_the_profile():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 4)
    torch.manual_seed(1)
    plain, _ = _lbfgs_run(nn.LSTM(4, 5, num_layers=2), x, False, [])
    evaluations = []
    torch.manual_seed(1)
    watched, mon = _lbfgs_run(nn.LSTM(4, 5, num_layers=2), x, True, evaluations)
    assert all(torch.equal(a, b) for a, b in zip(plain, watched))
    assert len(evaluations) > 2  # several evaluations per step
    record = mon.history[-1]
    for layer in range(2):
        assert_norms(record.layers[("", layer)].timestep_grad_norms, evaluations[-1][layer])


def test_lbfgs_closure_on_a_cell_loop_keeps_one_profile_of_sequence_length():
    from models import CellDecoder

    torch.manual_seed(0)
    model = CellDecoder()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5)
    x = torch.randn(7, 3, 4)

    def closure():
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        return loss

    with gradwatch.watch(model, opt, every=1, console=False) as mon:
        opt.step(closure)
        mon.step()
    record = mon.history[0]
    assert len(record.layers[("cell", 0)].timestep_grad_norms) == 7
    assert len(record.timestep_output_grad_norms["cell"]) == 7


# ---------------------------------------------------------------------------------------------
# 3. TorchScript

def test_jit_trace_of_a_watched_model_in_train_mode_works_unmeasured_with_one_warning(caplog):
    torch.manual_seed(0)
    model = SeqClassifier(nn.LSTM, dropout=0.0)
    x = torch.randint(0, 20, (5, 2))
    with gradwatch.watch(model, every=1, console=False) as mon:
        traced = torch.jit.trace(model, x)
        traced(x).sum().backward()
        torch.jit.trace(model, x)
        model.zero_grad()
        model(x).sum().backward()  # the eager model is still measured
        mon.step()
    torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)
    said = [r.getMessage() for r in caplog.records if "torch.jit.trace" in r.getMessage()]
    assert len(said) == 1 and "not measured" in said[0]
    assert mon.history[0].layers[("rnn", 1)].timestep_grad_norms is not None


def test_jit_script_of_a_watched_model_works_and_runs_the_plain_forward():
    torch.manual_seed(0)
    model = SeqClassifier(nn.GRU, dropout=0.0)
    cell_model = nn.Sequential(nn.GRUCell(3, 4))
    x = torch.randint(0, 20, (5, 2))
    with gradwatch.watch(model, console=False), gradwatch.watch(cell_model, console=False):
        scripted = torch.jit.script(model)
        scripted_cell = torch.jit.script(cell_model)
    c = torch.randn(2, 3)
    torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=0)
    torch.testing.assert_close(scripted_cell(c), cell_model(c), rtol=0, atol=0)
    scripted(x).sum().backward()
    assert model.rnn.weight_hh_l0.grad is not None


def test_closure_that_only_returns_a_loss_computed_before_step_keeps_the_measurements():
    torch.manual_seed(0)
    model = nn.GRU(4, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradwatch.watch(model, opt, every=1, console=False) as mon:
        loss = model(torch.randn(6, 3, 4))[0].square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step(lambda: loss)
        mon.step(loss)
    assert len(mon.history[0].layers[("", 0)].timestep_grad_norms) == 6
