"""The package's exceptions: one root, :class:`TLMMError`, and one class per problem.

Each class also derives from the built-in exception it has always been (a missing weights
package is an ``ImportError``, a shape mismatch a ``ValueError``), so code that caught those
keeps working, and ``except TLMMError`` catches everything this package raises on purpose.

Example:
    >>> issubclass(ProjectionShapeError, TLMMError), issubclass(ProjectionShapeError, ValueError)
    (True, True)
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "CorruptWeightsError",
    "MetricModelError",
    "MissingWeightsError",
    "OutputExistsError",
    "ProjectionShapeError",
    "ReadoutError",
    "TLMMError",
    "UnitIndexError",
]


class TLMMError(Exception):
    """Root of every error ``transformer_lens_mm`` raises on purpose; the message names the fix."""


class ProjectionShapeError(TLMMError, ValueError):
    """The projection does not fit between the image encoder and the language model."""


class MissingWeightsError(TLMMError, ImportError):
    """A weights package (or a file it should ship) is missing; the message has the command."""


class CorruptWeightsError(TLMMError, RuntimeError):
    """A shipped weights file cannot be read; the message has the reinstall command."""


class ConfigError(TLMMError, ValueError):
    """A run's configuration is invalid, or does not match the run it would resume."""


class OutputExistsError(TLMMError, FileExistsError):
    """An output folder exists and overwriting was not asked for."""


class MetricModelError(TLMMError, RuntimeError):
    """A BERTScore/CLIPScore model cannot be loaded; the message says how to provide one."""


class ReadoutError(TLMMError, ValueError):
    """A unit's write cannot be read out as asked: the model has no MLP output weights, a norm
    between the unit and the unembedding is one the readout does not know, or a gated MLP's
    unit was given without the sign of its activation."""


class UnitIndexError(TLMMError, IndexError):
    """A ``(layer, unit)`` lies outside the model (layer index or ``d_mlp``)."""
