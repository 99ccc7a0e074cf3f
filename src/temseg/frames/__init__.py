"""Reading microscope frames (TIFF, MRC, EMD, DM3/DM4, SER), normalisation, resampling, tiling."""

from temseg.frames.normalise import METHODS, normalise
from temseg.frames.read import (
    FORMATS,
    Frame,
    FrameError,
    IncompleteFrameError,
    detect_format,
    read_frame,
    read_frames,
    read_metadata,
    sidecar_path,
)
from temseg.frames.resample import model_grid_shape, resample
from temseg.frames.tiling import pad_to_multiple, predict_tiled, tile_windows
from temseg.frames.units import nm_per_unit, to_nm

__all__ = [
    "FORMATS",
    "METHODS",
    "Frame",
    "FrameError",
    "IncompleteFrameError",
    "detect_format",
    "model_grid_shape",
    "nm_per_unit",
    "normalise",
    "pad_to_multiple",
    "predict_tiled",
    "read_frame",
    "read_frames",
    "read_metadata",
    "resample",
    "sidecar_path",
    "tile_windows",
    "to_nm",
]
