"""Metric logging shared by every workflow: metrics.jsonl, TensorBoard, optional W&B, PNG plots."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Iterable, Mapping

import numpy as np

from latent_jax import paths


def _scalar(v: Any) -> Any:
    if hasattr(v, "item") and np.ndim(v) == 0:
        return v.item()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


class MetricsWriter:
    """Appends one JSON object per call to workdir/metrics.jsonl and mirrors numeric values to
    TensorBoard (workdir/tb) and, when `wandb_project` is set, to Weights & Biases.

    Only process 0 writes; other processes get a no-op writer.
    """

    def __init__(self, workdir: str, wandb_project: str = "", config: Mapping | None = None,
                 tensorboard: bool = True, enabled: bool | None = None):
        if enabled is None:
            import jax

            enabled = jax.process_index() == 0
        self.enabled = enabled
        self.path = paths.join(workdir, "metrics.jsonl")  # workdir may be a URI (gs://...)
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        paths.makedirs(workdir)
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(paths.orbax_path(paths.join(workdir, "tb")))
            except ImportError:  # TensorBoard is optional
                self._tb = None
            except Exception as e:  # noqa: BLE001 - e.g. a bucket tensorboardX cannot write to
                print(f"warning: no TensorBoard logs ({type(e).__name__}: {e}); metrics.jsonl is still written")
                self._tb = None
        if wandb_project:
            import wandb  # optional dependency; a clear ImportError names it

            self._wandb = wandb.init(project=wandb_project, dir=None if paths.is_uri(workdir) else workdir,
                                     config=dict(config or {}))

    def write(self, step: int, metrics: Mapping[str, Any], prefix: str = "") -> dict:
        row = {"step": int(step), "time": time.time()}
        row.update({f"{prefix}{k}": _scalar(v) for k, v in metrics.items()})
        if not self.enabled:
            return row
        paths.append_text(self.path, json.dumps(row) + "\n")
        numeric = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k not in ("step", "time")}
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(k, v, int(step))
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(numeric, step=int(step))
        return row

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(path: str) -> list[dict]:
    """Rows of a metrics.jsonl (a file path or a workdir)."""
    if paths.as_path(path).is_dir():
        path = paths.join(path, "metrics.jsonl")
    if not paths.exists(path):
        return []
    with paths.open_file(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_series(
    out_png: str,
    series: Mapping[str, tuple[Iterable[float], Iterable[float]]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    vlines: Iterable[float] = (),
    vline_label: str = "",
    secondary: Mapping[str, tuple[Iterable[float], Iterable[float]]] | None = None,
    secondary_label: str = "",
) -> str:
    """Line plot of named (x, y) series to a PNG, with optional vertical markers (stage
    boundaries, say) and series on a secondary y axis. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (x, y) in series.items():
        ax.plot(list(x), list(y), marker="o", ms=3, label=name)
    for i, v in enumerate(vlines):
        ax.axvline(v, color="gray", ls="--", lw=0.8, label=vline_label if i == 0 and vline_label else None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    if secondary:
        ax2 = ax.twinx()
        for name, (x, y) in secondary.items():
            ax2.plot(list(x), list(y), ls=":", marker="s", ms=3, label=name, color="tab:red")
        ax2.set_ylabel(secondary_label)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        ax.legend(handles, labels, loc="best", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def wilson_interval(correct: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a proportion `correct` / n (95% for the default z):
    (low, high) in [0, 1]; (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = float(correct) / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, center - half)), float(min(1.0, center + half))
