"""Draw docs/img/example.png: simulated HRTEM frames with true and predicted particle outlines.

Run from the repository root: ``python docs/figure.py``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from temseg.engine import load_engine
from temseg.inference import predict_probability
from temseg.model import load_bundle
from temseg.segment import scores, segment_probability
from temseg.synth import simulate_frame

FRAMES = (("Au", 101), ("Au", 202), ("CdSe", 303))


def main(out: Path = Path("docs/img/example.png")) -> None:
    bundle = load_bundle()
    engine = load_engine(bundle, "auto")
    fig, axes = plt.subplots(1, len(FRAMES), figsize=(4 * len(FRAMES), 4.3))
    for ax, (material, seed) in zip(axes, FRAMES, strict=True):
        frame = simulate_frame(material, 512, seed)
        pixel_nm = frame.metadata["pixel_nm"]
        probability = predict_probability(frame.image, engine, bundle, pixel_nm=pixel_nm)
        result = segment_probability(probability, bundle.threshold_for(material), pixel_nm)
        dice = scores(result.mask, frame.mask)["dice"]
        ax.imshow(frame.image, cmap="gray")
        ax.contour(frame.mask, [0.5], colors="lime", linewidths=1.0)
        ax.contour(result.mask, [0.5], colors="red", linewidths=1.0, linestyles="--")
        ax.set_title(f"{material}: {result.n_particles} particles, Dice {dice:.2f}", fontsize=10)
        ax.set_axis_off()
    fig.suptitle("Simulated HRTEM (512 px, 0.05 nm/px): truth (green), bundled model (red dashed)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=72)
    engine.close()


if __name__ == "__main__":
    main()
