"""From a claimed job to what the engine needs: its request (as validated at submit) and its decoded inputs.

This is the CPU half of a job (fetching, unpacking and decoding photos), which the worker may run for the next job
while the device is busy with the current one (:mod:`.feed`). :func:`load_job_inputs` is the one place that reads a
claimed job's stored request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from ..contract.errors import ErrorType
from ..contract.stored import StoredRequest
from ..inputs.resolve import InputLoader
from ..jobs.records import Job
from ..settings import Settings


class JobError(Exception):
    """A job's failure with the message its client sees and fal's ``error_type``."""

    def __init__(self, message: str, error_type: ErrorType) -> None:
        super().__init__(message)
        self.error_type = error_type


@dataclass
class LoadedJob:
    """A job ready for the device: its request and its inputs, decoded."""

    request: StoredRequest
    photos: list[Image.Image]
    #: Each photo's name (its path in the archive, or which input it came from), for log lines about one photo.
    names: list[str]
    initial: Image.Image | None
    #: Seconds spent fetching and decoding (the result's ``timings["inputs"]``).
    seconds: float


def load_job_inputs(job: Job, settings: Settings, loader: InputLoader, log: Callable[..., None]) -> LoadedJob:
    """Read ``job``'s request and load its inputs. The request was validated at submit and is read as stored (no
    deployment rule is applied again); its files are storage keys, read from storage, or outside URLs, fetched.
    Raises ``InputError`` for inputs it cannot use (the user's to fix)."""
    request = job.input
    if request is None:  # a claim always loads the input; a job read without it cannot be run
        raise JobError("The stored request was not loaded", ErrorType.INTERNAL_ERROR)
    started = time.perf_counter()
    named, initial = loader.load_named(request, log)
    return LoadedJob(request, [image for _, image in named], [name for name, _ in named], initial,
                     time.perf_counter() - started)
