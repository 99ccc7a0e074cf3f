"""One reader per family of microscope files, each ``decode(path, data, max_pixels)``.

Every reader decodes a file's bytes already in memory (``data``) into a list
of :class:`temseg.frames.frame.Frame`, one per 2-D grayscale image, skipping
thumbnails and datasets that are not images. It raises
:class:`~temseg.frames.frame.FrameError` naming the file, or
:class:`~temseg.frames.frame.IncompleteFrameError` when the file is cut short.
"""
