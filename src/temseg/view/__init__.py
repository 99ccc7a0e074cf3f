"""``temseg view``: a live page of the mask stream in the browser (``docs/viewer.md``).

:mod:`~temseg.view.state` turns stream messages into what the page shows;
:mod:`~temseg.view.server` serves the page and its server-sent events
(starlette and uvicorn, the ``view`` extra, imported only here).
"""
