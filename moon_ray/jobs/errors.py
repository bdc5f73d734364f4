"""The errors of job submission that the command line prints as one message, without a traceback."""

from __future__ import annotations


class JobsError(Exception):
    """A user error (unknown pipeline, unreachable cluster, refused token, a cluster Python that cannot run
    moon-ray): printed without a traceback, because the message says what to do and a stack would not."""


class JobsTimeout(JobsError):
    """--timeout passed before the job finished; the job keeps running."""
