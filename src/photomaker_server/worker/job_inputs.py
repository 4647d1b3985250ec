"""From a claimed job to what the engine needs: its request (with this deployment's rules) and its decoded inputs.

This is the CPU half of a job (fetching, unpacking and decoding photos), which the worker may run for the next job
while the device is busy with the current one (:mod:`.feed`). :func:`load_job_inputs` is the one place that reads a
claimed job's stored request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image
from pydantic import ValidationError

from ..contract.request import PhotoMakerInput, error_details, parse_request
from ..inputs.resolve import InputLoader
from ..jobs.records import Job
from ..settings import Settings


class JobError(Exception):
    """A job's failure with the message its client sees and fal's ``error_type``."""

    def __init__(self, message: str, error_type: str) -> None:
        super().__init__(message)
        self.error_type = error_type


@dataclass
class LoadedJob:
    """A job ready for the device: its request and its inputs, decoded."""

    request: PhotoMakerInput
    photos: list[Image.Image]
    #: Each photo's name (its path in the archive, or which input it came from), for log lines about one photo.
    names: list[str]
    initial: Image.Image | None
    #: Seconds spent fetching and decoding (the result's ``timings["inputs"]``).
    seconds: float


def load_job_inputs(job: Job, settings: Settings, loader: InputLoader, log: Callable[..., None]) -> LoadedJob:
    """Read ``job``'s request and load its inputs. Raises :class:`JobError` for a request this deployment no longer
    accepts and ``InputError`` for inputs it cannot use (both the user's to fix)."""
    try:  # validated at submit; parsed here into the same model, with the same deployment rules
        request = parse_request(job.input, settings)
    except ValidationError as exc:  # e.g. the trigger word was changed while the request waited
        problems = "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in error_details(exc))
        raise JobError(f"The request is not valid on this server: {problems}", "input_error") from None
    started = time.perf_counter()
    named, initial = loader.load_named(request, log)
    return LoadedJob(request, [image for _, image in named], [name for name, _ in named], initial,
                     time.perf_counter() - started)
