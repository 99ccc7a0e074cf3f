"""Precision and recall versus threshold with the chosen threshold marked (PNG)."""

from __future__ import annotations

from pathlib import Path

from temseg.calibrate.sweep import Choice, Curves


def plot_calibration(curves: Curves, choice: Choice, path: str | Path, *, title: str = "") -> Path:
    """Write the calibration plot to ``path`` (PNG) and return the path."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=120)
    try:
        t = curves.thresholds
        ax.plot(t, curves.precision, label="precision", color="tab:blue")
        ax.plot(t, curves.recall, label="recall", color="tab:orange")
        ax.plot(t, curves.f1, label="F1 (Dice)", color="tab:green", linestyle="--", linewidth=1)
        ax.axvline(
            choice.threshold,
            color="black",
            linestyle=":",
            linewidth=1,
            label=f"chosen {choice.threshold:.4g}: P {choice.precision:.3f}, "
            f"R {choice.recall:.3f}, F1 {choice.f1:.3f}",
        )
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("threshold (particle probability)")
        ax.set_ylabel("pixel-wise score")
        ax.set_title(title or f"calibration ({choice.criterion}), {curves.n_images} frames")
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out)
    finally:
        plt.close(fig)
    return out
