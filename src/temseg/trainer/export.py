"""Write a trained network: model bundle, ONNX graph, training curve, registry row."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from temseg.model.bundle import ONNX_NAME, ModelBundle, load_bundle, save_bundle
from temseg.model.onnx_export import export_onnx
from temseg.model.unet import Network

CURVE_NAME = "training_curve.png"


def write_bundle(model: Network, metadata: Mapping[str, Any], out_dir: str | Path) -> ModelBundle:
    """Save ``model`` as a bundle with its ``model.onnx`` and return the loaded bundle."""
    path = save_bundle(model, dict(metadata), out_dir)
    bundle = load_bundle(path)
    export_onnx(bundle, path / ONNX_NAME)
    return bundle


def check_database(db: str) -> None:
    """Open (or create) database ``db`` once; :class:`~temseg.store.DatabaseError` if it fails."""
    from sqlalchemy.exc import OperationalError

    from temseg.store import connect, database_error

    try:
        connect(db).dispose()
    except OperationalError as exc:
        raise database_error(db, exc) from exc


def register_bundle(db: str, bundle: ModelBundle) -> None:
    """Add the bundle to the models table of database ``db`` (URL or file path).

    A database that cannot be opened or written raises
    :class:`~temseg.store.DatabaseError` saying where the bundle is.
    """
    from sqlalchemy.exc import OperationalError

    from temseg.store import DatabaseError, connect, database_error, register_model

    try:
        engine = connect(db)
        try:
            register_model(
                engine,
                bundle.model_id,
                str(bundle.metadata.get("name", bundle.model_id)),
                str(bundle.path),
                bundle.metadata,
            )
        finally:
            engine.dispose()
    except (DatabaseError, OperationalError) as exc:
        cause = exc if isinstance(exc, DatabaseError) else database_error(db, exc)
        raise DatabaseError(
            f"model {bundle.model_id} was written to {bundle.path} but not registered: {cause}"
        ) from exc


def plot_training_curve(history: Sequence[Mapping[str, float]], path: str | Path) -> Path:
    """Loss (train, validation) and validation Dice per epoch as a PNG.

    ``history`` holds one mapping per epoch with keys ``epoch``,
    ``train_loss``, ``val_loss`` and ``val_dice``.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(8.0, 3.2), dpi=120)
    try:
        ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", ms=3, label="train")
        ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", ms=3, label="validation")
        ax_loss.set_xlabel("epoch")
        ax_loss.set_ylabel("loss (cross-entropy + Dice)")
        ax_loss.legend(fontsize=8)
        ax_dice.plot(epochs, [h["val_dice"] for h in history], "o-", ms=3, color="tab:green")
        ax_dice.set_xlabel("epoch")
        ax_dice.set_ylabel("validation Dice (threshold 0.5)")
        ax_dice.set_ylim(0.0, 1.0)
        for ax in (ax_loss, ax_dice):
            ax.grid(alpha=0.3)
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out)
    finally:
        plt.close(fig)
    return out
