"""``temseg train`` under torch.distributed.run: two CPU processes (gloo), one bundle."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from temseg.model.bundle import load_bundle


def temseg_script() -> Path | None:
    beside = Path(sys.executable).with_name("temseg")
    if beside.is_file():
        return beside
    found = shutil.which("temseg")
    return None if found is None else Path(found)


def write_blobs(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    for i in range(n):
        cy, cx = rng.uniform(16, 48, 2)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < 100).astype(np.uint8)
        image = 1000 + 100 * rng.standard_normal((64, 64)) + 300 * np.sin(xx * 2.1) * mask
        tifffile.imwrite(folder / f"b{i}.tif", image.astype(np.uint16))
        tifffile.imwrite(folder / f"b{i}_mask.tif", mask)
        (folder / f"b{i}.json").write_text(json.dumps({"material": "Au", "pixel_nm": 0.1}))


@pytest.mark.slow
def test_two_process_cpu_training_writes_one_bundle(tmp_path):
    script = temseg_script()
    if script is None:
        pytest.skip("the temseg command is not installed")
    write_blobs(tmp_path / "data", 6)
    out = tmp_path / "models" / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(script), "train", "--data", str(tmp_path / "data"), "--out", str(out),
        "--epochs", "2", "--patch", "64", "--batch", "2", "--device", "cpu",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr.count("epoch 2/2") == 1  # progress from rank 0 only
    assert proc.stdout.count("written to") == 1
    bundle = load_bundle(out)
    assert bundle.metadata["training"]["world_size"] == 2
    assert bundle.metadata["training"]["epochs_run"] == 2
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["ddp"]
