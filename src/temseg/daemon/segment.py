"""Stage *segment*: threshold and particles of an inferred frame, off the inference thread.

Reads ``work.probability`` (model grid), ``frame_shape`` and ``threshold``,
or ``work.mask`` when the engine thresholded the frame on its device;
fills ``segmentation`` (mask, particles, area fraction), ``segment_s``
(thresholding and particle measurement only), and what the publisher sends
besides the mask: ``probability`` as the wire's float16 when
``send_probability``, else None (its memory goes now), and
``encoded_mask`` when the stream's encoding is PackBits. Both conversions
happen here, frames in parallel, rather than on the one recorder thread
(the figures: ``benchmarks/RESULTS.md``). A failure fails the frame.
"""

from __future__ import annotations

import logging
import time

from temseg.daemon.work import FrameWork
from temseg.inference import to_float16, to_frame_grid
from temseg.options import MaskEncoding
from temseg.segment import Measure, binarize, segment_mask
from temseg.stream.protocol import encode_mask

logger = logging.getLogger("temseg.daemon")


class SegmentStage:
    """See the module docstring. ``measure`` measures a mask's particles: in this thread,
    or in a worker process (:class:`~temseg.daemon.segment_pool.SegmentPool`)."""

    def __init__(
        self,
        measure: Measure,
        *,
        send_probability: bool,
        encoding: MaskEncoding,
        min_particle_nm: float = 0.0,
    ) -> None:
        self._measure = measure
        self._min_particle_nm = min_particle_nm
        self._send_probability = send_probability
        self._encoding = encoding

    def __call__(self, work: FrameWork) -> None:
        if work.threshold is None or work.frame is None:
            return
        if work.probability is None and work.mask is None:
            return
        start = time.perf_counter()
        segmented: float | None = None  # the timing covers thresholding and particles only
        try:
            if work.mask is not None:
                mask, work.mask = work.mask, None  # the segmentation holds it now
            else:
                assert work.probability is not None
                work.probability = to_frame_grid(work.probability, work.frame_shape)
                mask = binarize(work.probability, work.threshold)
            work.segmentation = segment_mask(
                mask,
                work.threshold,
                work.frame.pixel_nm,
                min_diameter_nm=self._min_particle_nm,
                measure=self._measure,
            )
            segmented = time.perf_counter()
            probability, work.probability = work.probability, None
            if self._send_probability and probability is not None:
                work.probability = to_float16(probability)
            if self._encoding == "packbits":
                work.encoded_mask = encode_mask(work.segmentation.mask, "packbits")
        except Exception as exc:
            logger.exception("segmentation failed path=%s", work.path)
            work.error = f"{work.path}: segmentation failed ({exc})"
            work.probability = work.mask = None
        finally:
            work.segment_s = (segmented or time.perf_counter()) - start
