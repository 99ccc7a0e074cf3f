"""What ``temseg train`` shows: a progress bar with ETA, a line per epoch, a summary."""

from __future__ import annotations

import math
import sys
from types import TracebackType
from typing import TYPE_CHECKING, Any

from temseg.trainer.loop import EpochStats, TrainResult

if TYPE_CHECKING:
    from rich.progress import TaskID


def epoch_line(stats: EpochStats, epochs: int) -> str:
    """One line per epoch; epoch 0 is the starting model's validation."""
    if stats.epoch == 0:
        return f"start  val loss {stats.val_loss:.4f}  val Dice {stats.val_dice:.3f}"
    return (
        f"epoch {stats.epoch}/{epochs}  loss {stats.train_loss:.4f}  val loss {stats.val_loss:.4f}"
        f"  val Dice {stats.val_dice:.3f}  lr {stats.lr:.2e}  {stats.seconds:.1f} s"
    )


class TrainProgress:
    """Epoch lines on stderr, and on a terminal a rich progress bar with ETA.

    The bar has two rows: the current epoch's optimiser steps and all epochs
    (the ETA assumes training runs to the last epoch; early stopping may end
    it sooner). Use as a context manager around the training call.
    """

    def __init__(self, epochs: int, *, enabled: bool = True) -> None:
        self.epochs = epochs
        self.enabled = enabled
        self._progress: Any = None
        self._epoch_task: TaskID | None = None
        self._all_task: TaskID | None = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description:>12}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )

    def __enter__(self) -> TrainProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def epoch(self, stats: EpochStats) -> None:
        """Print the epoch's line (above the bar)."""
        if not self.enabled:
            return
        line = epoch_line(stats, self.epochs)
        if self._progress is not None:
            self._progress.console.print(line, highlight=False, markup=False)
        else:
            print(line, file=sys.stderr, flush=True)

    def batch(self, epoch: int, done: int, total: int) -> None:
        """Advance the bar after optimiser step ``done`` of ``total`` in ``epoch``."""
        progress = self._progress
        if progress is None:
            return
        if self._all_task is None:
            self._all_task = progress.add_task("all epochs", total=self.epochs * total)
        if self._epoch_task is None or done == 1:
            if self._epoch_task is not None:
                progress.remove_task(self._epoch_task)
            self._epoch_task = progress.add_task(f"epoch {epoch}/{self.epochs}", total=total)
        progress.update(self._epoch_task, completed=done)
        progress.update(self._all_task, completed=(epoch - 1) * total + done)


def summary_lines(result: TrainResult, epochs: int) -> list[str]:
    """The end-of-run summary: validation Dice before and after, kept epoch, stop, time, bundle."""
    ran = len(result.history)
    if result.stopped_early:
        stop = f"early stopping fired after epoch {ran} of {epochs}"
    elif result.out_of_time:
        stop = f"time budget reached after epoch {ran} of {epochs}"
    else:
        stop = f"ran all {ran} epochs, early stopping did not fire"
    kept = (
        "the starting model (no epoch beat it)"
        if result.best_epoch == 0
        else f"epoch {result.best_epoch}"
    )
    minutes, seconds = divmod(result.seconds, 60.0)
    lines = [
        f"validation Dice: start {_fmt(result.initial_val_dice)} -> final "
        f"{_fmt(result.final_val_dice)} on {result.n_val} frames ({result.n_train} for training, "
        f"{result.patch} px patches)",
        f"kept: {kept}; {stop}",
        f"time: {int(minutes)} min {seconds:.0f} s",
        f"model {result.model_id} written to {result.bundle_path}",
    ]
    for material, m in sorted(result.metrics.items()):
        lines.append(
            f"  {material}: Dice {m['dice']:.3f}  precision {m['precision']:.3f}  "
            f"recall {m['recall']:.3f}  ({m['n_val']} validation frames)"
        )
    return lines


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"
