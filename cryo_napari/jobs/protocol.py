"""The one job protocol.

A job is a generator function that yields small event objects and *returns* its result::

    def job(...) -> Generator[Event, None, Result]:
        yield Progress(0, n, "starting")
        ...
        yield Artifact("map", path)
        return result

The CLI drives it with :func:`run_in_terminal` (tqdm bar, log lines, Ctrl-C closes the
generator); napari drives the same generator in a thread worker
(``create_worker(job, _progress=...)``) and aborts by ``worker.quit()``, which takes effect at the
next ``yield``. Jobs never print and never touch Qt. A job writes every output atomically before
yielding the event that announces it, so stopping at any yield leaves complete files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator, Union

log = logging.getLogger("cryo_napari")


@dataclass(frozen=True)
class Progress:
    """``step`` of ``total`` done (``total`` may be 0 when unknown)."""

    step: int
    total: int
    message: str = ""


@dataclass(frozen=True)
class Metric:
    """A named number at a step (loss, FSC, class switches …)."""

    name: str
    value: float
    step: int


@dataclass(frozen=True)
class Artifact:
    """A complete output file was written (``kind``: map, checkpoint, plot, table …)."""

    kind: str
    path: Path


@dataclass(frozen=True)
class Log:
    """A line for the user (``level``: info, warning)."""

    level: str
    text: str


Event = Union[Progress, Metric, Artifact, Log]
Job = Generator[Event, None, Any]


def run_in_terminal(job: Job, desc: str = "", quiet: bool = False) -> Any:
    """Drive a job from the CLI: progress bar from ``Progress``, logs from ``Log``/``Artifact``.

    Returns the job's return value. On Ctrl-C the generator is closed (its ``finally`` blocks run)
    and ``KeyboardInterrupt`` propagates.
    """
    from tqdm import tqdm

    bar = None
    try:
        while True:
            try:
                ev = next(job)
            except StopIteration as stop:
                return stop.value
            if isinstance(ev, Progress):
                if bar is None and not quiet:
                    bar = tqdm(total=ev.total or None, desc=desc, unit="step", leave=False, disable=None)
                if bar is not None:
                    bar.total = ev.total or None
                    bar.n = ev.step
                    if ev.message:
                        bar.set_postfix_str(ev.message, refresh=False)
                    bar.refresh()
            elif isinstance(ev, Log):
                (log.warning if ev.level == "warning" else log.info)(ev.text)
            elif isinstance(ev, Artifact):
                log.debug("wrote %s %s", ev.kind, ev.path)
    except BaseException:
        job.close()
        raise
    finally:
        if bar is not None:
            bar.close()


def run_to_end(job: Job, on_event: Callable[[Event], Any] | None = None) -> Any:
    """Run a job to its end and return its result (tests, scripts, jobs inside jobs);
    ``on_event`` sees every event (default: events are ignored)."""
    while True:
        try:
            ev = next(job)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(ev)
