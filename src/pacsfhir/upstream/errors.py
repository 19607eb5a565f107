"""What an upstream call can fail with."""

from __future__ import annotations


class UpstreamError(Exception):
    """An upstream that is down, refuses us, times out or answers a failure;
    ``timed_out``: it may have been slow rather than wrong (504 rather than 502)."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.timed_out = timed_out
