"""Reading frames (tifffile), normalisation, pixel-size resampling and tiling."""
