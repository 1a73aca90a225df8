"""Every error the project raises on purpose derives from `InstructUEError`.

Messages say what went wrong, where, and how to fix it; the CLI prints them as one line.
"""

from __future__ import annotations


class InstructUEError(Exception):
    """Base class of the project's errors."""


class SchemaMismatchError(InstructUEError):
    """Data, a model or an export was made with other feature definitions than the current schema."""


class DataValidationError(InstructUEError):
    """An input table or feature frame lacks a column, has a wrong type, or holds unusable values."""


class ModelNotFoundError(InstructUEError):
    """No trained model or export at the configured location."""


class CorruptModelError(InstructUEError):
    """A model or export folder is incomplete, tampered with, or unreadable."""


class MissingPackageError(InstructUEError):
    """An optional package that holds model weights or data is not installed."""


class ConfigError(InstructUEError):
    """A configuration value is invalid."""
