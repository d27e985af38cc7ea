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
    "ArgumentError",
    "ArgumentTypeError",
    "CheckpointError",
    "ConfigError",
    "CorpusError",
    "CorruptWeightsError",
    "DataSetError",
    "DiskFullError",
    "EncoderError",
    "HookShapeError",
    "ImageInputError",
    "InputShapeError",
    "LayerRangeError",
    "MetricModelError",
    "MissingFileError",
    "MissingPackageError",
    "MissingWeightsError",
    "ModelSetupError",
    "NoUsableItemError",
    "OutOfRangeError",
    "OutputExistsError",
    "PositionGroupError",
    "ProjectionShapeError",
    "ReadoutError",
    "StoreError",
    "TLMMError",
    "TableError",
    "TargetError",
    "TrainingError",
    "UnitIndexError",
    "UnknownNameError",
    "UnsupportedModelError",
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


class LayerRangeError(TLMMError, IndexError):
    """A layer or a window of layers lies outside the model."""


class PositionGroupError(TLMMError, ValueError):
    """A group of sequence positions (image, prompt, last, ...) is empty for an item, or two
    groups that must be disjoint overlap."""


class HookShapeError(TLMMError, ValueError):
    """An SAE or transcoder does not fit the hook point it would sit on (its ``d_in``/``d_out``
    against the activation's width)."""


class CorpusError(TLMMError, ValueError):
    """A reference text corpus cannot give what was asked (too few vectors for the neighbours
    requested, no text, a layer it was not built at)."""


class UnsupportedModelError(TLMMError, NotImplementedError):
    """The model's implementation cannot do what was asked (e.g. per-head knockout where the
    attention is computed inside a Hugging Face module); the message says what can be done."""


class MissingPackageError(TLMMError, ImportError):
    """An optional package a feature needs is missing or cannot be installed beside this
    TransformerLens; the message has the command or the environment to use."""


class StoreError(TLMMError, RuntimeError):
    """A run folder cannot be used as it is: another process is running in it, an incompatible
    version wrote it, or a shard fails its checksum when the run is merged."""


class DiskFullError(TLMMError, OSError):
    """The disk filled up while a run wrote its results; the finished shards are intact and the
    run resumes once there is space."""


class EncoderError(TLMMError, TypeError, ValueError):
    """An image encoder cannot be built or read as asked: the model is not of the family's
    kind, the kind is not registered, a layer it does not have, a builder that returns no
    encoder."""


class InputShapeError(TLMMError, ValueError):
    """A tensor or batch given to the package has the wrong shape for the model (pixels, image
    features, token ids, masks); the message says what shape was expected and how to make it."""


class ArgumentError(TLMMError, ValueError):
    """An argument's value is not one the function takes: out of its range, an unknown option,
    arguments that exclude each other, or counts that do not match (one per image)."""


class ArgumentTypeError(TLMMError, TypeError):
    """An argument is of a type the function cannot use (the message names the types it takes)."""


class CheckpointError(TLMMError, ValueError):
    """A checkpoint's contents are not what its loader reads: other keys or shapes, or a pickle
    that carries code (refused by ``torch.load(weights_only=True)``)."""


class DataSetError(TLMMError, ValueError):
    """A data set's files or options cannot give items: a malformed annotation or caption file,
    an option that leaves nothing to draw."""


class ImageInputError(TLMMError, TypeError, ValueError):
    """An object given as an image cannot be read as one (type, dtype, value range, an unreadable
    file); the message says which inputs are images."""


class MissingFileError(TLMMError, FileNotFoundError):
    """A file or folder the call reads does not exist (a config, a checkpoint, a run's results)."""


class ModelSetupError(TLMMError, RuntimeError):
    """The model lacks a part the call needs (an image encoder, a projection, a hook point to
    inject at, the last input to take positions from); the message says how to add it."""


class NoUsableItemError(TLMMError, ValueError, RuntimeError):
    """Every item of a batch or run failed before the step (no caption with a noun, unreadable
    images): there is nothing to attribute, ablate or decode."""


class OutOfRangeError(TLMMError, IndexError):
    """An index lies outside its range (a sequence position, a unit, an item of a generated set)."""


class TableError(TLMMError, ValueError):
    """A results table lacks the columns or rows a function needs; the message names the function
    that makes them."""


class TargetError(TLMMError, ValueError):
    """A target token cannot be used: not in the vocabulary, not one token, a special token, or
    an input not laid out for its caption."""


class TrainingError(TLMMError, FloatingPointError):
    """Training diverged (a non-finite loss); the message says which setting to change."""


class UnknownNameError(TLMMError, KeyError):
    """A name is not among the ones known (an id in an annotation file, a column, a part of
    the speed layer); the message lists them."""

    def __str__(self) -> str:  # a KeyError would print its message quoted
        return str(self.args[0]) if self.args else ""
