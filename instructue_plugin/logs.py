"""Keeping the libraries we call quiet where their logging is chatter rather than news."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Raise the named loggers ("" is the root) to ERROR for a while: the exporter's and quantizer's libraries log
    every pass and skipped tensor at INFO."""
    loggers = [logging.getLogger(name) if name else logging.getLogger() for name in names]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for each, level in zip(loggers, levels, strict=True):
            each.setLevel(level)


@contextlib.contextmanager
def dropping_records(name: str, containing: str) -> Iterator[None]:
    """For a while, drop the named logger's records whose message contains `containing`; its level and every
    other record stay as they are (transformers decides what to run by its loggers' levels)."""

    def keep(record: logging.LogRecord) -> bool:
        return containing not in record.getMessage()

    target = logging.getLogger(name)
    target.addFilter(keep)
    try:
        yield
    finally:
        target.removeFilter(keep)
