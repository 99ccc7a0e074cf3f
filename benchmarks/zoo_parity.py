"""Imported published networks vs. the original frameworks, on the same frames.

For each pyNanoFind weight file, the paper's ``get_unet`` is built in Keras 3
(PyTorch backend) and given the file with ``load_weights``; for each
HRTEM-Generalization file, the notebook's ``UNet`` / ``ResidualBlock``
classes are defined here and the file is unpickled with ``torch.load``
(trusted files only: this runs the pickle, which temseg's importer never
does). Both get each frame normalised as their own code does it
(pyNanoFind's ``median_filter``; the notebook's ``standardize``). temseg
imports the same file (``temseg.model.zoo.import_model``) and computes the
probability map through ``predict_probability`` on each backend.

Reported per file and backend: max |p_temseg - p_original| over all pixels
of all frames and the fraction of pixels whose masks at 0.5 agree.

    KERAS_BACKEND=torch python benchmarks/zoo_parity.py \\
        --pynanofind unet481632_AuDots_final.h5 ... --hrtem UNet_..._model.h5 \\
        --frames ../shared/data/real-tem/au-tetrahedra --last 6
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from scipy.signal import medfilt2d
from torch import nn

from temseg.engine import load_engine
from temseg.frames.read import read_frame
from temseg.inference import predict_probability
from temseg.model.zoo import import_model

# --- the originals, rebuilt from the papers' code ---------------------------------------------


def keras_get_unet(size: int = 512):
    """pyNanoFind's get_unet((size, size, 1), 2), layer for layer, in Keras 3 on PyTorch."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras
    from keras import layers

    def conv_bn(x, filters):
        x = layers.Conv2D(filters, (3, 3), padding="same")(x)
        return layers.BatchNormalization(epsilon=1e-4)(x)

    inputs = keras.Input(shape=(size, size, 1))
    x, skips = inputs, []
    for filters in (4, 8, 16, 32):
        pre = conv_bn(x, filters)
        skips.append(layers.Activation("relu")(pre))
        x = layers.MaxPooling2D((2, 2), strides=(2, 2))(pre)
    for _ in range(2):
        x = layers.Activation("relu")(conv_bn(x, 32))
    for filters, skip in zip((32, 16, 8, 4), reversed(skips), strict=True):
        x = layers.UpSampling2D((2, 2))(x)
        x = layers.concatenate([skip, x], axis=3)
        x = layers.Activation("relu")(conv_bn(x, filters))
        x = layers.Dropout(0.2)(x)
        x = layers.Activation("relu")(conv_bn(x, filters))
    out = layers.Conv2D(2, (1, 1), activation="sigmoid", name="final_layer")(x)
    return keras.Model(inputs=inputs, outputs=out)


class ResidualBlock(nn.Module):
    """HRTEM-Generalization's residual block (attribute names as pickled)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.bn1, self.bn2 = nn.BatchNorm2d(c_out), nn.BatchNorm2d(c_out)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
        self.conv_add = nn.Conv2d(c_in, c_out, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.conv_add(x))


class UNet(nn.Module):
    """HRTEM-Generalization's UNet(num_blocks, filter_sequence, max_pool_sequence)."""

    def __init__(self, num_blocks: int, filters: list[int], pools: list[int]) -> None:
        super().__init__()
        self.downs, self.ups = nn.ModuleList(), nn.ModuleList()
        self.pools, self.upsamples = nn.ModuleList(), nn.ModuleList()
        c_in = 1
        for i in range(num_blocks):
            self.downs.append(ResidualBlock(c_in, filters[i]))
            c_in = filters[i]
            self.pools.append(nn.MaxPool2d(kernel_size=pools[i], stride=pools[i]))
        for i in reversed(range(num_blocks)):
            self.ups.append(ResidualBlock(filters[i] + filters[i + 1], filters[i]))
            self.upsamples.append(nn.Upsample(scale_factor=pools[i]))
        self.bottleneck = ResidualBlock(filters[num_blocks - 1], filters[num_blocks])
        self.final_conv = nn.Conv2d(filters[0], 2, kernel_size=1)
        self.num_blocks = num_blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i in range(self.num_blocks):
            x = self.downs[i](x)
            skips.append(x)
            x = self.pools[i](x)
        x = self.bottleneck(x)
        for i, skip in enumerate(reversed(skips)):
            x = self.ups[i](torch.cat((skip, self.upsamples[i](x)), dim=1))
        return self.final_conv(x)


def pynanofind_median_filter(image: np.ndarray) -> np.ndarray:
    """pyNanoFind's realDataProcess.median_filter, step for step."""
    padded = np.pad(image.astype("float32"), 3, "reflect")
    median = medfilt2d(padded, 3)[3:-3, 3:-3]
    final = image.astype(np.float64).copy()
    far = np.abs(image - median) > 5 * image.std()
    final[far] = median[far]
    final = final / final.std()
    final = final - final.min()
    return final / final.max()


def standardize(image: np.ndarray) -> np.ndarray:
    return (image - np.mean(image)) / np.std(image)


def original_pynanofind(path: Path, images: list[np.ndarray]) -> list[np.ndarray]:
    model = keras_get_unet(images[0].shape[0])
    model.load_weights(str(path))
    out = []
    for image in images:
        x = pynanofind_median_filter(image)[None, :, :, None].astype(np.float32)
        out.append(np.asarray(model.predict(x, verbose=0))[0, :, :, 1])
    return out


def original_hrtem(path: Path, images: list[np.ndarray]) -> list[np.ndarray]:
    main = sys.modules["__main__"]
    main.UNet, main.ResidualBlock = UNet, ResidualBlock  # where the pickle looks them up
    model = torch.load(path, map_location="cpu", weights_only=False).eval()
    out = []
    with torch.no_grad():
        for image in images:
            x = torch.from_numpy(standardize(image.astype(np.float64)).astype(np.float32))
            logits = model(x[None, None])
            out.append(torch.softmax(logits, dim=1)[0, 1].numpy())
    return out


# --- the comparison ---------------------------------------------------------------------------


def compare(path: Path, fmt: str, images: list[np.ndarray], backends: list[str]) -> list[dict]:
    original = (original_pynanofind if fmt == "pynanofind" else original_hrtem)(path, images)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bundle = import_model(path, fmt, Path(tmp) / "bundle")  # type: ignore[arg-type]
        for backend in backends:
            engine = load_engine(bundle, backend=backend, device="cpu", threads=2)
            diffs, agree, total = [], 0, 0
            for image, reference in zip(images, original, strict=True):
                ours = predict_probability(image, engine, bundle)
                diffs.append(float(np.abs(ours - reference).max()))
                agree += int(np.sum((ours >= 0.5) == (reference >= 0.5)))
                total += reference.size
            engine.close()
            rows.append(
                {
                    "file": path.name,
                    "format": fmt,
                    "backend": backend,
                    "frames": len(images),
                    "max_abs_diff": max(diffs),
                    "mask_agreement": agree / total,
                    "particle_fraction": float(np.mean([np.mean(r >= 0.5) for r in original])),
                }
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pynanofind", type=Path, nargs="*", default=[])
    parser.add_argument("--hrtem", type=Path, nargs="*", default=[])
    parser.add_argument(
        "--frames", type=Path, default=Path("../shared/data/real-tem/au-tetrahedra")
    )
    parser.add_argument("--last", type=int, default=6, help="frames: the last N sorted by name")
    parser.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    names = sorted(p for p in args.frames.glob("*.tif") if not p.stem.endswith("_mask"))
    images = [read_frame(p).image for p in names[-args.last :]]
    if not images:
        parser.error(f"no frames in {args.frames}")
    rows = []
    for fmt, files in (("pynanofind", args.pynanofind), ("hrtem-generalization", args.hrtem)):
        for path in files:
            for row in compare(path, fmt, images, args.backends):
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    worst = max((r["max_abs_diff"] for r in rows), default=0.0)
    lowest = min((r["mask_agreement"] for r in rows), default=1.0)
    print(f"worst max |diff| {worst:.2e}, lowest mask agreement {100 * lowest:.4f} %")
    return 0 if worst <= 1e-3 and lowest >= 0.999 else 1


if __name__ == "__main__":
    raise SystemExit(main())
