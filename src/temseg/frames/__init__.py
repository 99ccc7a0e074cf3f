"""Reading frames (tifffile), normalisation, pixel-size resampling and tiling."""

from temseg.frames.normalise import METHODS, normalise
from temseg.frames.read import Frame, FrameError, read_frame, read_metadata, sidecar_path
from temseg.frames.resample import model_grid_shape, resample
from temseg.frames.tiling import pad_to_multiple, predict_tiled, tile_windows

__all__ = [
    "METHODS",
    "Frame",
    "FrameError",
    "model_grid_shape",
    "normalise",
    "pad_to_multiple",
    "predict_tiled",
    "read_frame",
    "read_metadata",
    "resample",
    "sidecar_path",
    "tile_windows",
]
