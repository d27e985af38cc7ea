"""The step registry: every experiment of a run is a :class:`Step` with a name, its per-batch
work, its optional per-run reduction, the tables it writes, what it needs, and a cost estimate.

``tlmm analyze`` (and ``tlmm demo``, a preset of it) runs the search on every batch, then each
active step's ``batch`` on the batch's :class:`~transformer_lens_mm.pipelines.search.
BatchSearch` (its tables are written into the batch's shard, merged at the end, so they are
resumable and identical under torchrun), then, on the merged tables, each active step's
``run`` (tables of the whole run), then each active step's ``revisit`` (per batch again, for
work that needs the whole run first). A new step is one module in ``pipelines/steps/`` that
calls :func:`register_step`, and one import line in ``pipelines/steps/__init__.py``.

Example:
    >>> from transformer_lens_mm.pipelines.steps import STEPS
    >>> STEPS["ablation"].tables
    ('ablation',)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from transformer_lens_mm.errors import ConfigError, NoUsableItemError

if TYPE_CHECKING:  # the runner's types (no import at run time: analyze imports this module)
    from transformer_lens_mm.core.contract import MultimodalModel
    from transformer_lens_mm.data.datasets import Item
    from transformer_lens_mm.pipelines.search import BatchSearch

__all__ = [
    "STEPS",
    "Step",
    "StepContext",
    "active_steps",
    "insert_index",
    "register_step",
    "require_usable",
    "step_plan",
]


@dataclass
class StepContext:
    """What a step sees besides its batch: the model, the run's config, the data set (items
    by their index in it), and ``state``: per-run values a step builds once and reuses in every
    batch (e.g. the contextual lens's text index), rebuilt identically after a resume."""

    model: MultimodalModel
    config: Any  # AnalysisConfig
    data: Sequence[Item]
    state: dict[str, Any] = field(default_factory=dict)
    verbose: bool = False  # steps show their own progress bars
    n_run: int | None = None  # items the run searches (the first ones; None: all)

    def items_of(self, found: BatchSearch) -> list[Item]:
        """The data-set items of a batch's usable rows, in batch order."""
        return [self.data[int(index)] for _, index, _ in found.rows]


#: ``batch(ctx, found, seed) -> {table: rows}``: the step's work on one searched batch
BatchWork = Callable[["StepContext", "BatchSearch", int], dict[str, pd.DataFrame]]
#: ``run(ctx, tables) -> {table: rows}``: the step's reduction over the merged run
RunWork = Callable[["StepContext", Mapping[str, pd.DataFrame]], dict[str, pd.DataFrame]]
#: ``revisit(ctx, found, seed, tables) -> {table: rows}``: the step's work on one batch rebuilt
#: after the merge (no attribution), given the whole run's tables
RevisitWork = Callable[
    ["StepContext", "BatchSearch", int, Mapping[str, pd.DataFrame]], dict[str, pd.DataFrame]
]


@dataclass(frozen=True)
class Step:
    """One experiment of a run.

    Attributes:
        name: What ``[run] steps`` lists.
        what: One line: what it measures (and where the paper has it).
        on: Whether a config runs it when ``steps`` is not given (its switch, e.g.
            ``ablation_ks`` not empty).
        tables: The tables ``batch`` (or ``revisit``) writes (per shard, merged per run).
        batch: The per-batch work, or ``None``.
        run_tables: The tables ``run`` writes (once, after the merge).
        run: The per-run reduction, or ``None``.
        revisit: Per-batch work that needs the whole run first (e.g. units chosen over every
            image): after the merge and the ``run`` reductions, each batch is rebuilt from the
            run's tables (:func:`~transformer_lens_mm.pipelines.search.revisit_batch`: the same
            inputs, no caption or attribution again) and given with the run's tables; its
            results go into shards of their own (resumable, checksummed), then merged.
        needs: What the step needs: ``"masks"`` (a data set with object masks: skipped with
            the reason in the summary otherwise, refused under ``--strict``), or the name of
            another step whose tables it reads.
        forwards: Estimated LM passes per image (a forward or a backward each; captions count
            their decoding steps as one pass each) for ``--dry-run``, given the config and the
            model's number of layers (``None`` when not known without loading it).
        paper: Where the paper has this experiment (empty: ours).
        always: Runs in every run, listed in ``steps`` or not (the controls).
        order: Where the step comes in listings and reports: the paper's order first (its
            sections), then ours.
    """

    name: str
    what: str
    on: Callable[[Any], bool]
    tables: tuple[str, ...] = ()
    batch: BatchWork | None = None
    run_tables: tuple[str, ...] = ()
    run: RunWork | None = None
    revisit: RevisitWork | None = None
    needs: tuple[str, ...] = ()
    forwards: Callable[[Any, int | None], float | None] = lambda config, n_layers: 0.0
    paper: str = ""
    always: bool = False
    order: int = 100


STEPS: dict[str, Step] = {}


def register_step(step: Step) -> Step:
    """Add ``step`` to :data:`STEPS` (its tables must not clash with another step's)."""
    if step.batch is not None and step.revisit is not None:
        raise ConfigError(f"step {step.name!r}: give it batch or revisit work, not both")
    taken = {t: s.name for s in STEPS.values() for t in (*s.tables, *s.run_tables)}
    clash = [t for t in (*step.tables, *step.run_tables) if taken.get(t, step.name) != step.name]
    if clash:
        raise ConfigError(f"step {step.name!r}: tables {clash} are written by another step")
    STEPS[step.name] = step
    return step


def require_usable(found: BatchSearch, *, attributed: bool = True) -> None:
    """Raise :class:`~transformer_lens_mm.errors.NoUsableItemError` for a batch with no
    usable item (every item failed before the attribution); ``attributed=False``: a batch
    rebuilt after the merge (:func:`~transformer_lens_mm.pipelines.search.revisit_batch`)
    only needs its inputs."""
    if not len(found) or (found.attribution if attributed else found.inputs) is None:
        raise NoUsableItemError(
            "the batch has no usable item (every item failed): nothing to ablate"
        )


def insert_index(table: pd.DataFrame, found: BatchSearch) -> pd.DataFrame:
    """Give a table keyed by ``item`` the ``index`` column of the search's schema (each item's
    position in the data set: what the merge orders a step's rows by); an empty table as is."""
    if len(table):
        index = {item: int(i) for item, i, _ in found.rows}
        table.insert(1, "index", [index[item] for item in table["item"]])
    return table


def active_steps(config: Any) -> list[Step]:
    """The steps a config runs, in registry order: ``config.steps`` when given (checked:
    every name known, every step it reads from also listed), else every step whose switch is on.

    Raises:
        ConfigError: an unknown step (the known ones listed) or a step whose input step is
            not run (naming the step that produces it).
    """
    names = getattr(config, "steps", None)
    ordered = sorted(STEPS.values(), key=lambda s: s.order)
    if names is None:
        return [s for s in ordered if s.on(config)]
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        raise ConfigError(f"unknown steps {unknown}; the steps are {sorted(STEPS)}")
    chosen = [s for s in ordered if s.name in names or s.always]
    for step in chosen:
        for need in step.needs:
            if need in STEPS and need not in names:
                raise ConfigError(
                    f"step {step.name!r} reads the tables of step {need!r} "
                    f"({', '.join(STEPS[need].tables + STEPS[need].run_tables)}): add "
                    f"{need!r} to [run] steps"
                )
    return chosen


def step_plan(config: Any, n_layers: int | None = None) -> list[str]:
    """``--dry-run``'s lines: the search and each active step, its tables and its estimated LM
    passes per image (``?`` where it depends on the model's depth and that is not known)."""
    search = 2 + (config.max_new_tokens if config.caption_source == "model" else 0)
    lines = [
        "steps (estimated LM passes per image: one forward or backward each):",
        f"  search: caption, first noun c, attribution of every MLP unit, top-{config.k} "
        f"decoded -> items, units, maps; ~{search} passes; paper: sec. 2-3",
    ]
    total, unknown = float(search), False
    for step in active_steps(config):
        n = step.forwards(config, n_layers)
        unknown |= n is None
        total += n or 0.0
        tables = ", ".join([*step.tables, *(f"{t} (run)" for t in step.run_tables)])
        paper = f"; paper: {step.paper}" if step.paper else ""
        needs = f"; needs {', '.join(step.needs)}" if step.needs else ""
        cost = "?" if n is None else f"{n:g}"
        lines.append(f"  {step.name}: {step.what} -> {tables}; ~{cost} passes{needs}{paper}")
    more = " (+ steps whose cost depends on the depth)" if unknown else ""
    lines.append(f"  total: ~{total:g} LM passes per image{more}")
    return lines
