"""The errors raised for a user's inputs: missing, unreadable or inconsistent files. The command line
reports them as one line naming the file or the value (:mod:`lacunes.cli`), never a traceback."""

from __future__ import annotations


class LacunesInputError(ValueError):
    """Base class of the errors raised for missing, unreadable or inconsistent inputs."""


class MissingModalityError(LacunesInputError):
    """A modality of a subject is missing."""


class UnreadableImageError(LacunesInputError):
    """A file cannot be read as a 3D scalar image."""


class GeometryMismatchError(LacunesInputError):
    """Images that must share a grid do not (shape or spacing)."""
