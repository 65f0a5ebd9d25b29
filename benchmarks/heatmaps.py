"""Per-timestep gradient-norm heatmaps over training for one vanishing and one exploding run.

    python benchmarks/heatmaps.py --out bench-out
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

import gradwatch

__all__ = ["heatmap_runs", "plot_heatmaps"]


class _Copy(nn.Module):
    """Recall the first token after a long delay: needs long-range memory."""

    def __init__(self, hidden: int, gain: float, layers: int = 2):
        super().__init__()
        self.rnn = nn.RNN(4, hidden, num_layers=layers)
        self.head = nn.Linear(hidden, 4)
        with torch.no_grad():
            for name, p in self.rnn.named_parameters():
                if name.startswith("weight_hh"):
                    nn.init.orthogonal_(p, gain=gain)

    def forward(self, x):
        return self.head(self.rnn(x)[0][-1])


def _run(gain: float, lr: float, steps: int, T: int, seed: int = 0) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = _Copy(32, gain)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    monitor = gradwatch.watch(model, opt, every=1, console=False)
    for _ in range(steps):
        tokens = torch.randint(0, 4, (T, 16))
        x = nn.functional.one_hot(tokens, 4).float()
        loss = nn.functional.cross_entropy(model(x), tokens[0])
        opt.zero_grad(); loss.backward(); opt.step(); monitor.step(loss)
    monitor.close()
    layers = sorted({k for s in monitor.history for k in s.layers})
    grids = {f"{k[0]}:{k[1]}": [s.layers[k].timestep_grad_norms or [] for s in monitor.history] for k in layers}
    return {"grids": grids, "alerts": [(a.step, a.sign, a.severity) for a in monitor.alerts],
            "loss": [s.loss for s in monitor.history]}


def heatmap_runs(quick: bool = False) -> dict[str, dict[str, Any]]:
    steps = 30 if quick else 80
    return {
        "vanishing (tanh RNN, gain 0.5, T=100)": _run(0.5, 0.05, steps, 100),
        "exploding (tanh RNN, gain 1.8, lr 0.3)": _run(1.8, 0.3, steps, 60),
    }


def plot_heatmaps(runs: dict[str, dict[str, Any]], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    files = []
    for idx, (title, run) in enumerate(runs.items()):
        grids = run["grids"]
        fig, axes = plt.subplots(1, len(grids), figsize=(5.5 * len(grids), 3.8), squeeze=False)
        for ax, (layer, rows) in zip(axes[0], grids.items()):
            width = max((len(r) for r in rows), default=0)
            data = [[(max(v, 1e-12) if math.isfinite(v) else float("nan")) for v in r] + [float("nan")] * (width - len(r))
                    for r in rows]
            tensor = torch.tensor(data, dtype=torch.float64).T  # timesteps x steps
            finite = tensor[torch.isfinite(tensor)]
            if finite.numel() == 0:
                continue
            im = ax.imshow(tensor.numpy(), aspect="auto", origin="lower", cmap="magma",
                           norm=LogNorm(vmin=max(float(finite.min()), 1e-12), vmax=float(finite.max())))
            for step, sign, severity in run["alerts"]:
                if severity != "info":
                    ax.axvline(step, color="cyan" if severity == "warning" else "red", lw=0.8, alpha=0.7)
            ax.set_title(f"layer {layer}", fontsize=9)
            ax.set_xlabel("training step (lines: warnings cyan, critical red; white: NaN/Inf)")
            ax.set_ylabel("timestep t")
            fig.colorbar(im, ax=ax, label="‖∂L/∂x_t‖")
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        name = f"heatmap_{'vanishing' if idx == 0 else 'exploding'}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(name)
    return files


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-out")
    parser.add_argument("--quick", action="store_true")
    a = parser.parse_args()
    Path(a.out).mkdir(parents=True, exist_ok=True)
    print(plot_heatmaps(heatmap_runs(quick=a.quick), Path(a.out)))
