"""Read time per microscope format and import time per reader library.

For each format of ``format_files.WRITERS`` and each size, one uint16
frame of SIZE x SIZE px is written to a temporary folder and read back with
``temseg.frames.read_frames``, (a) from the file, whole (open, read, detect,
decode), and (b) from its bytes already in memory (decode only, as the
daemon does after hashing). Every read is checked against the written
pixels. Where installed, other readers of the same files are timed for
comparison: the ``dm4`` package (MIT, DM4 only) and rosettasciio (GPL-3).
Import times are measured in a fresh interpreter per module, after what it
needs anyway (numpy, or temseg.frames for temseg's readers), median of
``--imports`` runs. Prints a Markdown table.

    python benchmarks/bench_formats.py --sizes 512 4096 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from format_files import WRITERS

from temseg.bench.stats import median_ms
from temseg.frames import read_frames

# (label, imported first and not timed, module timed)
IMPORTS = [
    ("tifffile", "numpy", "tifffile"),
    ("mrcfile", "numpy", "mrcfile"),
    ("h5py", "numpy", "h5py"),
    ("temseg.frames (numpy, scipy; readers not yet imported)", "numpy", "temseg.frames"),
    ("temseg TIFF reader", "temseg.frames", "temseg.frames.formats.tiff"),
    ("temseg MRC reader with mrcfile", "temseg.frames", "temseg.frames.formats.mrc, mrcfile"),
    ("temseg EMD reader with h5py", "temseg.frames", "temseg.frames.formats.emd, h5py"),
    ("temseg DM3/DM4 reader", "temseg.frames", "temseg.frames.formats.dm"),
    ("temseg SER reader", "temseg.frames", "temseg.frames.formats.ser"),
    ("dm4 (MIT)", "numpy", "dm4"),
    ("rosettasciio DM reader (GPL-3)", "numpy", "rsciio.digitalmicrograph"),
    ("rosettasciio TIA reader (GPL-3)", "numpy", "rsciio.tia"),
]


def other_ms(read: Callable[[], np.ndarray], image: np.ndarray, repeats: int) -> str:
    """Median ms of another reader, or why it gave no figure (refused or differing pixels)."""
    try:
        pixels = read()
    except Exception as exc:  # another library's errors, reported in the table
        return f"refused ({type(exc).__name__})"
    if pixels.shape != image.shape:
        return f"read shape {pixels.shape}"
    return f"{median_ms(read, repeats):.2f}"


def import_ms(setup: str, module: str, runs: int) -> float | None:
    code = (
        f"import {setup}; import time; t = time.perf_counter(); import {module}; "
        "print(time.perf_counter() - t)"
    )
    times = []
    for _ in range(runs):
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            return None
        times.append(float(result.stdout.strip().splitlines()[-1]) * 1e3)
    return statistics.median(times)


def dm4_package_read(path: Path) -> np.ndarray:
    import dm4

    with dm4.DM4File.open(str(path)) as f:
        root = f.read_directory()
        entry = root.named_subdirs["ImageList"].unnamed_subdirs[-1]
        image = entry.named_subdirs["ImageData"]
        dims = image.named_subdirs["Dimensions"].unnamed_tags
        width, height = (f.read_tag_data(t) for t in dims[:2])
        data = f.read_tag_data(image.named_tags["Data"])
        return np.asarray(data).reshape(height, width)


def rsciio_read(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix in (".dm3", ".dm4"):
        from rsciio.digitalmicrograph import file_reader
    elif suffix == ".ser":
        from rsciio.tia import file_reader
    elif suffix == ".mrc":
        from rsciio.mrc import file_reader
    elif suffix == ".emd":
        from rsciio.emd import file_reader
    else:
        from rsciio.tiff import file_reader
    # a copy: rosettasciio maps some files lazily; the pixels must be read to compare
    return np.array(file_reader(str(path))[0]["data"], copy=True)


def available(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 4096])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--imports", type=int, default=3, help="fresh interpreters per module")
    parser.add_argument("--no-others", action="store_true", help="time temseg's readers only")
    args = parser.parse_args()

    rows = []
    others = [] if args.no_others else [m for m in ("dm4", "rsciio") if available(m)]
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            image = (np.arange(size * size, dtype=np.uint32) % 4093).astype(np.uint16)
            image = image.reshape(size, size)
            for name, (suffix, write) in WRITERS.items():
                path = Path(folder) / f"{name.replace(' ', '_')}_{size}{suffix}"
                data = write(image, 0.05)
                path.write_bytes(data)
                (frame,) = read_frames(path)
                if not np.array_equal(frame.image, image):
                    raise SystemExit(f"{path}: pixels read back differ from those written")
                whole = median_ms(lambda p=path: read_frames(p), args.repeats)
                memory = median_ms(lambda p=path, d=data: read_frames(p, data=d), args.repeats)
                alt: dict[str, str] = {}
                if "dm4" in others and name == "dm4":
                    alt["dm4"] = other_ms(lambda p=path: dm4_package_read(p), image, args.repeats)
                if "rsciio" in others:
                    alt["rsciio"] = other_ms(lambda p=path: rsciio_read(p), image, args.repeats)
                rows.append((size, name, len(data), whole, memory, alt))
                path.unlink()

    print(
        "| size px | format | file MiB | read_frames(path) ms | from bytes ms | other readers ms |"
    )
    print("|---:|---|---:|---:|---:|---|")
    for size, name, nbytes, whole, memory, alt in rows:
        other = ", ".join(f"{k} {v}" for k, v in alt.items()) or "-"
        mib = nbytes / 2**20
        print(f"| {size} | {name} | {mib:.2f} | {whole:.2f} | {memory:.2f} | {other} |")
    print()
    print("| module | import ms |")
    print("|---|---:|")
    for label, setup, module in IMPORTS:
        ms = import_ms(setup, module, args.imports)
        figure = "not installed" if ms is None else f"{ms:.0f}"
        print(f"| {label} (`import {module}` after `{setup}`) | {figure} |")


if __name__ == "__main__":
    main()
