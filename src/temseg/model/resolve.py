"""Which bundle a name means: ``bundled``, ``active``, a registered model id or a folder.

``train --init``, ``calibrate --model`` and ``segment --model`` take the same
names. The database is only read, and only for ``active`` and model ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from temseg.model.bundle import BundleError, ModelBundle, load_bundle

if TYPE_CHECKING:
    from temseg.store.models import ModelRecord


def resolve_bundle(name: str | Path | None, db: str | None) -> ModelBundle:
    """Load the bundle that ``name`` stands for.

    Parameters
    ----------
    name
        A bundle folder; ``"bundled"`` (the model shipped with temseg);
        ``"active"`` or None (the database's active model, else the bundled
        one); or the id of a model registered in ``db``.
    db
        Database URL (or SQLite file) holding the model registry; None
        resolves ``active`` to the bundled model and knows no ids.

    Returns
    -------
    ModelBundle
        The loaded bundle. Unknown names raise :class:`BundleError` listing
        what would be accepted.
    """
    text = "active" if name is None else str(name)
    if text == "bundled":
        return load_bundle(None)
    if text != "active" and Path(text).exists():
        return load_bundle(text)
    records = _registered(db) if db is not None else []
    if text == "active":
        active = [r for r in records if r.active]
        return load_bundle(active[0].path if active else None)
    for record in records:
        if record.model_id == text:
            return load_bundle(record.path)
    known = ", ".join(r.model_id for r in records) or "none"
    where = f"registered in {db}: {known}" if db is not None else "no --db given to look up ids"
    raise BundleError(
        f"{text}: not a model bundle folder, nor a registered model id ({where}); "
        "give a bundle folder, 'bundled', 'active' or a registered id"
    )


def _registered(db: str) -> list[ModelRecord]:
    from temseg.store import connect, list_models

    try:
        engine = connect(db, create=False)
    except FileNotFoundError:
        return []
    try:
        return list_models(engine)
    finally:
        engine.dispose()
