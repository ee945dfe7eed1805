"""Progress records yielded by long jobs, and helpers to drain such generators.

Every long job in the core (training, inference, acquisition) is a generator that yields
:class:`Progress` records and returns its result. The GUI runs it in a napari thread worker
(cancelling between yields), the CLI and the tests drain it with :func:`run_to_end`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One step of a long job.

    Attributes
    ----------
    step : int
        Steps done so far (batches, epochs, tiles ...).
    total : int or None
        Steps in all, when known.
    message : str
        A short human-readable description of the step.
    metrics : dict
        Numbers worth showing or logging (loss, tiles/s, ...).
    """

    step: int
    total: int | None = None
    message: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float | None:
        """Fraction done in [0, 1], or None when the total is unknown."""
        if not self.total:
            return None
        return min(1.0, self.step / self.total)


def run_to_end(
    job: Generator[Progress, None, T], on_progress: Callable[[Progress], None] | None = None
) -> T:
    """Drain a job generator synchronously and return its result.

    Parameters
    ----------
    job : generator
        A generator yielding :class:`Progress` records and returning a result.
    on_progress : callable, optional
        Called with every record (a progress bar, a logger).
    """
    while True:
        try:
            record = next(job)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(record)
