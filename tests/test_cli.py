"""The `gradwatch` command: help everywhere, `run` on unmodified scripts, `demo`, `bench`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from gradwatch.cli import COMMANDS, main

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
WORD_LM = os.path.join(EXAMPLES, "word_lm.py")


def steps_of(path):
    with open(path) as f:
        return [r for r in map(json.loads, f) if r["type"] == "step"]


def write_script(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


# ---------------------------------------------------------------------------------------------- help
@pytest.mark.parametrize("command", [[]] + [[c] for c in COMMANDS], ids=["gradwatch"] + list(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(command + ["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: gradwatch" + "".join(" " + c for c in command))


# ---------------------------------------------------------------------------------------------- run
def test_run_word_lm_with_manual_updates_matches_clip_grad_norm(tmp_path, capsys):
    """Steps found from the backward pass: one record per bptt chunk, norms before clipping,
    and the hand-made update measured between two steps."""
    jsonl, norms = tmp_path / "run.jsonl", tmp_path / "norms.json"
    lr, clip, steps = 5.0, 0.25, 24
    status = main(["run", "--no-live", "--every", "4", "--jsonl", str(jsonl), WORD_LM, "--steps", str(steps),
                   "--eval-every", "10", "--lr", str(lr), "--clip", str(clip), "--log-norms", str(norms)])
    assert status == 0
    captured = capsys.readouterr()
    assert "done: 24 steps" in captured.out  # the script's own output passes through
    records = steps_of(jsonl)
    reference = json.loads(norms.read_text())
    assert [r["step"] for r in records] == list(range(steps))
    assert [r["grad_norm"] for r in records] == pytest.approx(reference, rel=1e-5)
    assert [r["probed"] for r in records] == [s % 4 == 0 for s in range(steps)]
    for r, total in zip(records, reference):
        coefficient = min(1.0, clip / (total + 1e-6))  # what clip_grad_norm_ applied
        for layer in r["layers"].values():
            assert layer["update_norm"] == pytest.approx(lr * coefficient * layer["grad_norm"], rel=1e-4)
        assert 0 < r["loss"] < 10


OPTIMIZER_SCRIPT = """
    import json, sys
    import torch
    from torch import nn

    torch.manual_seed(0)
    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(4, 8, num_layers=2, batch_first=True)
            self.head = nn.Linear(8, 3)
        def forward(self, x):
            return self.head(self.rnn(x)[0])
    model = Tagger()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    norms, losses = [], []
    for step in range(int(sys.argv[1])):
        opt.zero_grad()
        total = 0.0
        for micro in range(2):  # gradient accumulation: two backward passes per optimizer step
            x, y = torch.randn(3, 5, 4), torch.randint(0, 3, (3, 5))
            loss = nn.functional.cross_entropy(model(x).reshape(-1, 3), y.reshape(-1)) / 2
            loss.backward()
            total += loss.item()
        norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item())
        losses.append(total)
        opt.step()
        with torch.no_grad():
            model(torch.randn(2, 5, 4))  # an evaluation forward in between
    json.dump({"norms": norms, "losses": losses}, open(sys.argv[2], "w"))
"""


def test_run_with_an_optimizer_ends_steps_at_optimizer_step(tmp_path):
    script = write_script(tmp_path, "tagger.py", OPTIMIZER_SCRIPT)
    jsonl, ref = tmp_path / "run.jsonl", tmp_path / "ref.json"
    assert main(["run", "--no-live", "--every", "1", "--jsonl", str(jsonl), script, "5", str(ref)]) == 0
    reference = json.loads(ref.read_text())
    records = steps_of(jsonl)
    assert len(records) == 5
    assert [r["grad_norm"] for r in records] == pytest.approx(reference["norms"], rel=1e-5)
    assert [r["loss"] for r in records] == pytest.approx(reference["losses"], rel=1e-5)  # summed over backwards
    # two training forwards per step, both probed: the per-timestep norms cover 5 timesteps
    assert all(len(r["layers"]["rnn:1"]["timestep_grad_norms"]) == 5 for r in records)


SEQ2SEQ_SCRIPT = """
    import torch
    from torch import nn

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(4, 6)
        def forward(self, x):
            return self.gru(x)[1]

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = nn.GRUCell(4, 6)
            self.out = nn.Linear(6, 4)
        def forward(self, h, steps):
            x, outs = torch.zeros(h.shape[1], 4), []
            h = h[0]
            for _ in range(steps):
                h = self.cell(x, h)
                x = self.out(h)
                outs.append(x)
            return torch.stack(outs)

    encoder, decoder = Encoder(), Decoder()
    enc_opt = torch.optim.SGD(encoder.parameters(), lr=0.1)
    dec_opt = torch.optim.SGD(decoder.parameters(), lr=0.1)
    for step in range(4):
        src, tgt = torch.randn(7, 2, 4), torch.randn(3, 2, 4)
        enc_opt.zero_grad(); dec_opt.zero_grad()
        loss = (decoder(encoder(src), 3) - tgt).pow(2).mean()
        loss.backward()
        enc_opt.step(); dec_opt.step()
    print("trained")
"""


def test_run_clip_acts_before_the_optimizer_step(tmp_path):
    script = write_script(tmp_path, "tagger.py", OPTIMIZER_SCRIPT)
    jsonl, ref = tmp_path / "run.jsonl", tmp_path / "ref.json"
    assert main(["run", "--no-live", "--clip", "0.05", "--jsonl", str(jsonl), script, "3", str(ref)]) == 0
    reference = json.loads(ref.read_text())["norms"]  # measured by the script before opt.step()
    records = steps_of(jsonl)
    assert [r["clip"]["norm_before"] for r in records] == pytest.approx(reference, rel=1e-5)
    assert [r["grad_norm"] for r in records] == pytest.approx(reference, rel=1e-5)
    assert all(r["clip"]["norm_after"] == pytest.approx(0.05, rel=1e-4) for r in records)


def test_run_clip_applies_to_a_script_that_updates_by_hand(tmp_path, capsys):
    """Bug: `--clip` printed "does not apply" for scripts without an optimizer. Now the gradients are
    clipped right after backward(), before the hand-written update: the run follows, step by step,
    the same script clipping itself with torch.nn.utils.clip_grad_norm_(..., 0.25)."""
    reference, clipped = tmp_path / "reference.json", tmp_path / "clipped.json"
    common = [WORD_LM, "--steps", "12", "--eval-every", "100", "--model", "RNN_TANH", "--lr", "20"]  # the recipe's lr
    subprocess.run([sys.executable, *common, "--clip", "0.25", "--log-norms", str(reference)], check=True,
                   capture_output=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    jsonl = tmp_path / "run.jsonl"
    # the script's own clip_grad_norm_ is told 1e9 (no effect): only gradwatch clips
    status = main(["run", "--no-live", "--clip", "norm:0.25", "--jsonl", str(jsonl),
                   *common, "--clip", "1e9", "--log-norms", str(clipped)])
    assert status == 0
    err = capsys.readouterr().err
    assert "does not apply" not in err and "--clip acts after each backward()" in err
    before = json.loads(reference.read_text())  # clip_grad_norm_'s norms before clipping, reference run
    after = json.loads(clipped.read_text())     # what the script's update saw under gradwatch run
    records = steps_of(jsonl)
    assert [r["grad_norm"] for r in records] == pytest.approx(before, rel=1e-4)  # same trajectory
    assert after == pytest.approx([min(n, 0.25) for n in before], rel=1e-4)
    assert max(before) > 0.25 * 2  # the test clips for real
    for r, total in zip(records, before):
        coefficient = min(1.0, 0.25 / (total + 1e-6))
        # the JSONL says what was clipped (it was empty for hand-updated scripts)
        assert r["clip"]["policy"] == "norm" and r["clip"]["coefficient"] == pytest.approx(coefficient, rel=1e-4)
        for layer in r["layers"].values():
            assert layer["update_norm"] == pytest.approx(20 * coefficient * layer["grad_norm"], rel=1e-4)


def test_remedies_name_the_cli_flag_under_gradwatch_run():
    from gradwatch.detectors import remedies

    assert "clip=1" in remedies.norm_spike(0.5) and "--clip" not in remedies.norm_spike(0.5)
    with remedies.spelled_for_cli():
        for text in (remedies.norm_spike(0.5), remedies.norm_absolute("RNN", True), remedies.large_updates(),
                     remedies.norm_growth(), remedies.non_finite("gradients", None, None, None)):
            assert "--clip norm:" in text and "clip=<" not in text and "watch(..., clip" not in text
        assert "--clip norm:1 " in remedies.norm_spike(0.5) + " "
    assert "--clip" not in remedies.norm_growth()  # reset when the run ends


EXPLODING_SCRIPT = """
    import torch
    from torch import nn

    torch.manual_seed(0)
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.head = nn.RNN(4, 16, nonlinearity="relu"), nn.Linear(16, 1)
            with torch.no_grad():
                self.rnn.weight_hh_l0.copy_(1.5 * torch.eye(16))
        def forward(self, x):
            return self.head(self.rnn(x)[0])

    model = Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(6):
        loss = model(torch.randn(40, 8, 4)).square().mean()
        opt.zero_grad(); loss.backward(); opt.step()
"""


def test_run_prints_remedies_with_the_cli_flag(tmp_path, capsys):
    script = write_script(tmp_path, "boom.py", EXPLODING_SCRIPT)
    assert main(["run", "--no-live", script]) == 0
    err = capsys.readouterr().err
    assert "remedy:" in err and "gradwatch run --clip norm:" in err
    assert "gradwatch.watch(..., clip=" not in err


@pytest.mark.parametrize("spelling", ["auto", "zclip", "autoclip", "agc:0.01", "value:1", "norm:0.25", "0.25"])
def test_run_clip_takes_every_policy_by_its_cli_spelling(tmp_path, spelling):
    script = write_script(tmp_path, "tagger.py", OPTIMIZER_SCRIPT)
    jsonl, ref = tmp_path / "run.jsonl", tmp_path / "ref.json"
    assert main(["run", "--no-live", "--clip", spelling, "--jsonl", str(jsonl), script, "3", str(ref)]) == 0
    records = steps_of(jsonl)
    expected = spelling.partition(":")[0] if not spelling[0].isdigit() else "norm"
    assert records and all(r["clip"]["policy"] == expected for r in records)


def test_run_clip_error_lists_cli_spellings_not_constructors(tmp_path, capsys):
    script = write_script(tmp_path, "tagger.py", OPTIMIZER_SCRIPT)
    status = main(["run", "--no-live", "--clip", "zclip:beta=3", script, "3", str(tmp_path / "ref.json")])
    assert status != 0
    err = capsys.readouterr().err
    assert "--clip zclip:beta=3" in err and "alpha, z_threshold" in err
    status = main(["run", "--no-live", "--clip", "Zclipp", script])
    err = capsys.readouterr().err
    assert status != 0 and "norm:MAX_NORM" in err and "zclip" in err and "ZClip(" not in err


PLATEAU_AT_CHANCE_SCRIPT = """
    import torch
    from torch import nn

    torch.manual_seed(0)
    class Model(nn.Module):  # the target is noise: the best prediction is its mean, at MSE = its variance, 1
        def __init__(self):
            super().__init__()
            self.rnn, self.head = nn.RNN(2, 16), nn.Linear(16, 1)
            with torch.no_grad():
                self.rnn.weight_hh_l0.mul_(0.05)  # the early timesteps get no gradient
                self.head.bias.fill_(6.0)  # the loss starts far above chance and falls to it
        def forward(self, x):
            return self.head(self.rnn(x)[0][-1]).squeeze(-1)

    model = Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(45):
        x, y = torch.randn(40, 32, 2), torch.randn(32)
        loss = (model(x) - y).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
"""


def test_run_chance_loss_calls_a_run_stuck_at_chance(tmp_path, capsys):
    """`gradwatch run` had no way to pass chance_loss: a loss that fell to the chance level and stopped there
    looked like convergence (info only), and the info did not say how to tell gradwatch the chance level."""
    script = write_script(tmp_path, "noise.py", PLATEAU_AT_CHANCE_SCRIPT)
    assert main(["run", "--no-live", "--every", "5", script]) == 0
    err = capsys.readouterr().err
    assert "WARNING" not in err and "INFO vanishing/temporal_decay" in err
    assert "gradwatch run --chance-loss LOSS makes slow_progress warn" in err and "chance_loss=" not in err
    jsonl = tmp_path / "run.jsonl"
    assert main(["run", "--no-live", "--every", "5", "--chance-loss", "1", "--jsonl", str(jsonl), script]) == 0
    err = capsys.readouterr().err
    assert "WARNING vanishing/slow_progress at step 29" in err and "the chance loss 1 you gave" in err
    assert "--chance-loss LOSS" not in err  # given: no hint


def test_run_detector_sets_any_threshold(tmp_path, capsys):
    script = write_script(tmp_path, "noise.py", PLATEAU_AT_CHANCE_SCRIPT)
    jsonl = tmp_path / "run.jsonl"
    status = main(["run", "--no-live", "--every", "5", "--detector", "disable=temporal_decay", "--detector",
                   "chance_loss=1", "--detector", "cooldown=5", "--jsonl", str(jsonl), script])
    assert status == 0
    alerts = [(a["sign"], a["step"]) for r in steps_of(jsonl) for a in r.get("alerts", [])]
    # chance_loss=1: slow_progress at step 29; cooldown=5: said again every 5 steps (the default 100: once)
    assert alerts == [("slow_progress", step) for step in range(29, 45, 5)]


def test_run_chance_loss_and_detector_chance_loss_must_agree(tmp_path, capsys):
    script = write_script(tmp_path, "noise.py", PLATEAU_AT_CHANCE_SCRIPT)
    assert main(["run", "--chance-loss", "1", "--detector", "chance_loss=1.0", "--detector", "cooldown=5",
                 "--every", "50", script]) == 0
    capsys.readouterr()
    assert main(["run", "--chance-loss", "1", "--detector", "chance_loss=2", script]) == 2
    assert capsys.readouterr().err == ("gradwatch run: error: --chance-loss 1 and --detector chance_loss=2 disagree: "
                                       "give the chance loss once (--chance-loss LOSS).\n")


def test_run_detector_unknown_key_lists_the_valid_keys(capsys):
    from gradwatch.detectors.config import DetectorConfig

    assert main(["run", "--detector", "cooldwn=5", "train.py"]) == 2
    err = capsys.readouterr().err
    assert "no detector option 'cooldwn' (did you mean 'cooldown'?)" in err
    assert all(name in err for name in DetectorConfig.option_names())


def test_run_watches_each_model_of_a_seq2seq_script(tmp_path, capsys):
    script = write_script(tmp_path, "seq2seq.py", SEQ2SEQ_SCRIPT)
    jsonl = tmp_path / "run.jsonl"
    assert main(["run", "--no-live", "--every", "1", "--jsonl", str(jsonl), script]) == 0
    err = capsys.readouterr().err
    assert "watching Encoder" in err and "watching Decoder" in err
    encoder, decoder = steps_of(jsonl), steps_of(tmp_path / "run.Decoder.jsonl")
    assert len(encoder) == len(decoder) == 4
    assert list(encoder[0]["layers"]) == ["gru:0"] and list(decoder[0]["layers"]) == ["cell:0"]
    assert len(decoder[0]["layers"]["cell:0"]["timestep_grad_norms"]) == 3  # one per cell call


def test_run_keeps_argv_main_output_and_exit_status(tmp_path, capsys):
    script = write_script(tmp_path, "args.py", """
        import sys
        print("argv", sys.argv[1:], "name", __name__)
        sys.exit(int(sys.argv[1]))
    """)
    assert main(["run", "--no-live", script, "3", "--lr", "0.1"]) == 3
    assert "argv ['3', '--lr', '0.1'] name __main__" in capsys.readouterr().out
    assert sys.argv[0] != script  # restored afterwards


def test_run_reports_a_failing_script_like_python(tmp_path, capsys):
    script = write_script(tmp_path, "boom.py", """
        def train():
            raise ValueError("bad batch")
        train()
    """)
    assert main(["run", "--no-live", script]) == 1
    err = capsys.readouterr().err
    assert "ValueError: bad batch" in err and script in err
    assert "runpy" not in err and os.path.join("gradwatch", "cli") not in err


def test_run_removes_every_hook_and_patch(tmp_path):
    from torch.nn.modules import module as module_mod
    from torch.optim import optimizer as optimizer_mod

    before = (dict(module_mod._global_forward_pre_hooks), dict(module_mod._global_forward_hooks),
              dict(optimizer_mod._global_optimizer_post_hooks))
    init, backward = torch.optim.Optimizer.__init__, torch.autograd.backward
    script = write_script(tmp_path, "tagger.py", OPTIMIZER_SCRIPT)
    assert main(["run", "--no-live", script, "2", str(tmp_path / "ref.json")]) == 0
    after = (dict(module_mod._global_forward_pre_hooks), dict(module_mod._global_forward_hooks),
             dict(optimizer_mod._global_optimizer_post_hooks))
    assert after == before
    assert torch.optim.Optimizer.__init__ is init and torch.autograd.backward is backward


def test_run_rejects_bad_options_before_the_script_starts(tmp_path, capsys):
    marker = tmp_path / "ran"
    script = write_script(tmp_path, "touch.py", f"open({str(marker)!r}, 'w').close()\n")
    assert main(["run", "--every", "0", script]) == 2
    assert "every" in capsys.readouterr().err and not marker.exists()
    assert main(["run", str(tmp_path / "missing.py")]) == 2
    assert "no such script" in capsys.readouterr().err


def test_python_dash_m_gradwatch_run_passes_status_and_output(tmp_path):
    script = write_script(tmp_path, "tiny.py", """
        import sys, torch
        from torch import nn
        rnn = nn.RNN(2, 3)
        opt = torch.optim.SGD(rnn.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad(); rnn(torch.randn(4, 1, 2))[0].sum().backward(); opt.step()
        print("finished", sys.argv[1])
        sys.exit(7)
    """)
    jsonl = tmp_path / "tiny.jsonl"
    proc = subprocess.run([sys.executable, "-m", "gradwatch", "run", "--no-live", "--jsonl", str(jsonl), script, "ok"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 7, proc.stderr
    assert "finished ok" in proc.stdout
    assert len(steps_of(jsonl)) == 3


# ---------------------------------------------------------------------------------------------- demo
@pytest.mark.parametrize("scenario", ["healthy", "vanishing", "exploding"])
def test_demo_scenarios_show_their_gradient_profile(scenario):
    from gradwatch.cli.demo import run_demo

    monitor = run_demo(scenario, steps=2, every=1, console=False)
    profile = monitor.history[0].layers[("rnn", 0)].timestep_grad_norms
    first, last = profile[0], profile[-1]
    if scenario == "healthy":
        assert 0.1 < first / last < 10  # every timestep gets gradient
    elif scenario == "vanishing":
        assert first < 1e-6 * last
    else:
        assert first > 10 * last  # grows going back in time


def test_demo_nan_scenario_locates_the_corrupted_input():
    from gradwatch.cli.demo import SCENARIOS, run_demo

    at = SCENARIOS["nan"].nan_at_step
    monitor = run_demo("nan", steps=at + 1, every=50, console=False)
    bad = monitor.history[at].nonfinite
    assert (bad.where, bad.module, bad.layer, bad.timestep) == ("input", "rnn", 0, 17)
    assert monitor.history[at - 1].nonfinite is None


def test_demo_intro_names_the_chance_loss_it_passes(capsys):
    assert main(["demo", "--steps", "1", "--no-live"]) == 0
    assert "chance_loss=0.167, the target's variance." in " ".join(capsys.readouterr().err.split())
    assert main(["demo", "--scenario", "exploding", "--steps", "1", "--no-live"]) == 0
    assert "chance_loss" not in capsys.readouterr().err


def test_demo_command_writes_a_jsonl_stream(tmp_path, capsys):
    jsonl = tmp_path / "demo.jsonl"
    assert main(["demo", "--scenario", "healthy", "--steps", "3", "--no-live", "--jsonl", str(jsonl)]) == 0
    assert len(steps_of(jsonl)) == 3
    assert "gradwatch plot" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- newcomer
LOADED_BACK_SCRIPT = """
import io, torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.LSTM(2, 8), nn.Linear(8, 1)

    def forward(self, x):
        return self.head(self.rnn(x)[0][-1])

torch.manual_seed(0)
model = Net()
opt = torch.optim.SGD(model.parameters(), lr=1e-2)
x = torch.randn(10, 4, 2)
for _ in range(3):
    loss = model(x).pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
saved = io.BytesIO()
torch.save(model.state_dict(), saved)
saved.seek(0)
best = Net()
best.load_state_dict(torch.load(saved))
best.eval()
with torch.no_grad():
    print("test loss", best(x).pow(2).mean().item())
print("with grad too", best(x).sum().item())
"""


def test_run_piped_prints_the_verdict_and_info_alerts(tmp_path, capsys):
    """Off a terminal (CI logs, `| tee`) only WARNING and up came out, through logging's fallback."""
    script = write_script(tmp_path, "tiny.py", """
        import torch
        from torch import nn
        rnn = nn.GRU(2, 3)
        opt = torch.optim.SGD(rnn.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad(); rnn(torch.randn(4, 1, 2))[0].sum().backward(); opt.step()
    """)
    assert not sys.stdout.isatty()
    assert main(["run", script]) == 0  # no --no-live
    err = capsys.readouterr().err
    assert "gradwatch: watching GRU" in err
    assert err.count("gradwatch: 3 steps watched, no vanishing or exploding gradients seen.") == 1


def test_run_piped_shows_an_info_alert_like_demo(tmp_path, capsys):
    script = write_script(tmp_path, "decay.py", """
        import torch
        from torch import nn
        torch.manual_seed(0)
        rnn = nn.RNN(2, 16)
        with torch.no_grad():
            rnn.weight_hh_l0.mul_(0.05)
        opt = torch.optim.SGD(rnn.parameters(), lr=1e-3)
        for _ in range(2):
            opt.zero_grad(); rnn(torch.randn(64, 4, 2))[0][-1].sum().backward(); opt.step()
    """)
    assert main(["run", "--every", "1", script]) == 0
    err = capsys.readouterr().err
    assert "INFO vanishing/temporal_decay at step 1 (root module layer 0" in err
    assert "    Remedy: " in err


def test_run_a_script_without_recurrent_module_says_nothing_to_watch_once(tmp_path, capsys):
    script = write_script(tmp_path, "mlp.py", """
        import torch
        m = torch.nn.Linear(3, 1)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad(); m(torch.randn(4, 3)).sum().backward(); opt.step()
    """)
    assert main(["run", script]) == 0
    assert capsys.readouterr().err.count("gradwatch: nothing to watch") == 1


def test_run_does_not_attach_a_model_loaded_back_for_evaluation(tmp_path, capsys):
    """It was attached as a second model with an empty run.Net.jsonl."""
    script = write_script(tmp_path, "loaded.py", LOADED_BACK_SCRIPT)
    jsonl = tmp_path / "run.jsonl"
    assert main(["run", "--jsonl", str(jsonl), script]) == 0
    captured = capsys.readouterr()
    assert "test loss" in captured.out and "with grad too" in captured.out
    assert captured.err.count("gradwatch: watching") == 1
    assert len(steps_of(jsonl)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loaded.py", "run.jsonl"]


@pytest.mark.parametrize("argv, message", [
    (["run"], "gradwatch run: error: no training script given: gradwatch run [OPTIONS] SCRIPT [ARGS...]"),
    (["run", "missing.py"], "gradwatch run: error: no such script 'missing.py'"),
    (["run", "."], "gradwatch run: error: '.' is a folder, not a Python script"),
    (["run", "--every", "0", "x.py"], "gradwatch run: error: argument --every: 0 is not a positive whole number"),
    (["demo", "--steps", "-5"], "gradwatch demo: error: argument --steps: -5 is not a positive whole number"),
    (["demo", "--every", "0"], "gradwatch demo: error: argument --every: 0 is not a positive whole number"),
    (["demo", "--delay", "-1"], "gradwatch demo: error: argument --delay: -1 is not a number of seconds"),
    (["run", "--chance-loss", "abc", "x.py"],
     "gradwatch run: error: argument --chance-loss: abc is not a positive finite number: give the loss of a model "
     "that ignores its inputs"),
    (["run", "--chance-loss", "-0.5", "x.py"], "gradwatch run: error: argument --chance-loss: -0.5 is not a positive"),
    (["run", "--detector", "cooldown", "x.py"],
     "gradwatch run: error: argument --detector: 'cooldown' is not KEY=VALUE, e.g. --detector cooldown=50"),
    (["run", "--detector", "cooldown=x", "x.py"],
     "gradwatch run: error: argument --detector: cooldown=x: cooldown takes a positive whole number, got 'x'"),
    (["run", "--detector", "cooldown=0", "x.py"],
     "gradwatch run: error: argument --detector: cooldown=0: cooldown must be a positive integer, got 0"),
    (["run", "--detector", "spike_factor=inf", "x.py"],
     "gradwatch run: error: argument --detector: spike_factor=inf: spike_factor must be a positive finite number"),
    (["run", "--detector", "disable=oscilation", "x.py"],
     "gradwatch run: error: argument --detector: disable=oscilation: disable got unknown sign(s) ['oscilation']; "
     "supported: slow_progress"),
], ids=["no-script", "missing", "folder", "every-0", "demo-steps-negative", "demo-every-0", "demo-delay-negative",
        "chance-loss-text", "chance-loss-negative", "detector-no-equals", "detector-not-a-number", "detector-zero",
        "detector-inf", "detector-unknown-sign"])
def test_usage_errors_are_one_line_and_status_2(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(message) and captured.err.count("\n") == 1, captured.err
    assert captured.err.count("gradwatch run:") + captured.err.count("gradwatch demo:") == 1
    assert captured.out == ""


def test_run_a_script_with_a_syntax_error_shows_only_the_users_error(tmp_path, capsys):
    script = write_script(tmp_path, "broken.py", "import torch\ndef f(:\n    pass\n")
    assert main(["run", script]) == 1  # as `python broken.py`
    err = capsys.readouterr().err
    assert err.startswith(f'  File "{script}", line 2') and "SyntaxError" in err
    assert "Traceback" not in err and "runpy" not in err and "gradwatch" not in err


def test_demo_piped_lines_fit_the_width_and_keep_their_indent(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "60")
    assert main(["demo", "--scenario", "exploding", "--steps", "60"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert all(len(line) <= 60 for line in lines), [line for line in lines if len(line) > 60]
    assert lines[0].startswith("gradwatch demo (exploding): ") and lines[1].startswith("    ")
    starts = ("gradwatch", "CRITICAL", "WARNING", "INFO", "  ")  # a new message, or an indented continuation
    assert all(line.startswith(starts) for line in lines), [line for line in lines if not line.startswith(starts)]
    assert any(line.startswith("    Remedy: ") for line in lines)


def test_run_messages_wrap_at_the_terminal_width(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "60")
    script = write_script(tmp_path, "mlp.py", "import torch\ntorch.nn.Linear(2, 1)(torch.ones(2)).sum().backward()\n")
    assert main(["run", script]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("gradwatch: nothing to watch") and len(lines) > 1
    assert all(len(line) <= 60 for line in lines) and all(line.startswith("    ") for line in lines[1:])
