"""The house plan, checked: folders form layers (no import runs from a lower layer up, no import
circle), and the steps written once stay written once."""

import ast
from pathlib import Path

import transformer_lens_mm

PACKAGE = Path(transformer_lens_mm.__file__).parent
#: lowest layer first; a module may import from its own folder and the folders before it
LAYERS = ["fast", "core", "tools", "report", "data", "pipelines"]


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def folder(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else None


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {
        m: {t for t in imports(m, p, set(mods)) if not t.startswith(m + ".")}
        for m, p in mods.items()
    }


def test_every_folder_is_a_known_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(LAYERS)


def test_no_import_runs_from_a_lower_layer_up():
    rank = {f: i for i, f in enumerate(LAYERS)}
    upward = [
        f"{m} -> {t}"
        for m, targets in graph().items()
        for t in targets
        if folder(m) in rank and folder(t) in rank and rank[folder(t)] > rank[folder(m)]
    ]
    assert upward == []


def test_the_errors_module_is_a_leaf_every_layer_may_use():
    """``transformer_lens_mm.errors`` sits beside the folders: it imports nothing from the
    package, so a raise in ``fast`` (the lowest layer) is no upward import."""
    g = graph()
    assert g["transformer_lens_mm.errors"] == set()
    users = {folder(m) for m, targets in g.items() if "transformer_lens_mm.errors" in targets}
    assert set(LAYERS) <= users


def test_no_import_circle():
    g = graph()
    state: dict[str, int] = {}
    circles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in g.get(m, ()):
            if t == "transformer_lens_mm":
                continue
            if state.get(t) == 1:
                circles.append([*path[path.index(t) :], t])
            elif t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in g:
        if m not in state:
            visit(m, [m])
    assert circles == []


def calls(fn: str) -> list[str]:
    """Modules of the package that call ``fn`` (as ``fn(...)`` or ``x.fn(...)``)."""
    found = set()
    for m, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                if (f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")) == fn:
                    found.add(m)
    return sorted(found)


def test_the_search_step_is_written_once():
    """Captioning -> targets -> attribution -> decoding happens in pipelines.search only; the
    other pipelines call search_batch."""
    pipelines = [m for m in calls("targets_from_captions") if folder(m) == "pipelines"]
    assert pipelines == ["transformer_lens_mm.pipelines.search"]
    assert [m for m in calls("attribute") if folder(m) == "pipelines"] == [
        "transformer_lens_mm.pipelines.search"
    ]
    assert {m for m in calls("search_batch")} >= {
        "transformer_lens_mm.pipelines.analyze.runner",
        "transformer_lens_mm.pipelines.search",  # find_multimodal_neurons
    }


def test_the_demo_is_a_run_of_the_runner():
    """``tlmm demo`` runs no step itself: it calls the dataset runner (its preset config) and
    builds its report on the run's tables."""
    demo = "transformer_lens_mm.pipelines.demo.runner"
    assert demo in calls("run_analysis")
    for fn in ("search_batch", "ablation_step", "cross_concept_step", "unit_effect_step",
               "knockout_step", "soft_prompt_step", "logit_lens", "category_selectivity",
               "spatial_iou_by_category", "background_spatial"):  # fmt: skip
        assert demo not in calls(fn), fn


def test_unit_cards_soft_prompts_ablation_captions_and_intervals_are_written_once():
    assert calls("UnitCard") == ["transformer_lens_mm.report.cards"]
    assert calls("captions_under_ablation") == ["transformer_lens_mm.pipelines.steps.ablation"]
    assert calls("soft_prompt_table") == ["transformer_lens_mm.pipelines.steps.soft_prompts"]
    # the pipelines run the sweep in one step; a tool may build a new analysis on it (the
    # cross-concept ablation of tools.specificity evaluates other images under it)
    assert calls("ablation_sweep") == [
        "transformer_lens_mm.pipelines.steps.ablation",
        "transformer_lens_mm.tools.specificity",
    ]
    assert calls("NormalDist") == ["transformer_lens_mm.tools.stats"]


def test_every_step_is_registered_from_its_own_module():
    """A step is one module of pipelines/steps/ that registers it; the runners call steps only
    through the registry (no ``if config.wants(...)`` chain)."""
    from transformer_lens_mm.pipelines.steps import STEPS

    for step in STEPS.values():
        for work in (step.batch, step.run):
            if work is not None:
                assert work.__module__.startswith("transformer_lens_mm.pipelines.steps."), step
    runner = (PACKAGE / "pipelines" / "analyze" / "runner.py").read_text()
    assert ".wants(" not in runner and "ablation_step" not in runner


def test_a_units_output_weights_are_read_in_one_place():
    """Every readout of a unit goes through tools.readout (sign and norm rules in one place):
    no other module touches ``W_out`` except to write planted rows and to lay weights out."""
    allowed = {
        "transformer_lens_mm.tools.readout",
        "transformer_lens_mm.tools.planting",  # writes rows, reads none
        "transformer_lens_mm.fast.weights",  # memory layout only
    }
    users = set()
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr == "W_out") or (
                isinstance(node, ast.Constant) and node.value == "W_out"
            ):
                users.add(name)
    assert users <= allowed, sorted(users - allowed)
    assert "transformer_lens_mm.tools.readout" in users
