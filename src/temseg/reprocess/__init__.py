"""temseg.reprocess: segment an archive of frames with a model on a Dask cluster.

Results go into the same table as the daemon's live results; content the
model already has a result for (under any path) is skipped, so a rerun, or a
rerun after Ctrl-C, does only what is left, and each new model can be applied
to the whole archive. Needs ``temseg[distributed]``.
Never imports :mod:`temseg.daemon`; frames are found and given materials by
:mod:`temseg.frames.find`, the rules the daemon uses.

    reprocess(paths, db, *, model="auto", settings=None, scheduler="local",
              workers=1, processes=True, instrument=None, progress=None) -> Summary
    find_frames(paths, settings) -> list[Found]
    resolve_model(db, choice) -> (bundle path | None, model_id)
"""

from temseg.reprocess.run import (
    Found,
    ReprocessError,
    Summary,
    find_frames,
    reprocess,
    resolve_model,
)

__all__ = ["Found", "ReprocessError", "Summary", "find_frames", "reprocess", "resolve_model"]
