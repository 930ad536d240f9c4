"""The package's shape: layer subpackages that import only downwards (docs/ARCHITECTURE.md), no import cycle,
short functions, a loop with few parameters, and the entry points that must not load torch."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

from leukviz.training import engine

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "leukviz"
# Lowest first: a module may import its own layer and the layers before it, never one after it.
LAYERS = ("core", "scoring", "datasets", "models", "training", "runstore", "serving", "comparison", "app", "ui",
          "api", "benchmarks", "cli")
# The one module at the top of the package: the Python API (leukviz.train, runs, compare, ...), a layer of its own
# above the pages' models and below the CLI, which calls it.
TOP_MODULES = {"api"}


def _module(path: Path) -> str:
    """'layer.module' for a layer's module, 'layer' for its package's __init__.py (the CLI's main and
    build_parser live there), the stem for a file at the top of the package."""
    if path.parent == PACKAGE:
        return path.stem
    return path.parent.name if path.stem == "__init__" else f"{path.parent.name}.{path.stem}"


MODULES = {_module(p): p for p in PACKAGE.rglob("*.py")
           if p.parent != PACKAGE or p.stem not in ("__init__", "__main__")}


def _layer(module: str) -> str:
    return module.split(".")[0]


# The CLI: one module per command family (leukviz/cli/), on top of every layer.
CLI_MODULES = sorted(f"leukviz.{m}" for m in MODULES if _layer(m) == "cli")


def _imports(path: Path) -> set[str]:
    """The leukviz modules ('layer.module') a file imports, at its top or inside functions (TYPE_CHECKING
    blocks aside): function-level imports are imports too."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in typing_only or not isinstance(node, ast.ImportFrom) or not node.module:
            continue
        parts = node.module.split(".")
        if parts[0] != "leukviz":
            continue
        if len(parts) == 1:
            out |= {a.name for a in node.names}
        elif len(parts) == 2:  # from leukviz.layer import module, or a name of the layer's __init__.py
            named = {f"{parts[1]}.{a.name}" for a in node.names}
            out |= {n if n in MODULES else parts[1] for n in named}
        else:
            out.add(".".join(parts[1:3]))
    return out


def test_every_module_lives_in_a_layer():
    assert {_layer(m) for m in MODULES} <= set(LAYERS), sorted({_layer(m) for m in MODULES} - set(LAYERS))
    assert {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"} == TOP_MODULES


def test_the_cli_is_a_package_of_command_modules():
    assert {"cli", "cli.common", "cli.train"} <= set(MODULES), sorted(MODULES)
    assert not (PACKAGE / "cli.py").exists(), "leukviz/cli.py would be shadowed by the leukviz/cli/ package"


def test_nothing_but_the_entry_point_imports_the_cli():
    """Only leukviz/__main__.py (and the CLI's own modules) import the CLI; a command module imports the
    shared ones (cli.common), never the package's __init__ (which imports every command: a cycle)."""
    users = [m for m, path in MODULES.items()
             if _layer(m) != "cli" and any(_layer(d) == "cli" for d in _imports(path))]
    assert not users, users
    inward = [m for m, path in MODULES.items() if _layer(m) == "cli" and m != "cli"
              and "cli" in _imports(path)]
    assert not inward, inward


def test_layers_import_only_downwards():
    wrong = [f"{m} ({_layer(m)}) imports {dep} ({_layer(dep)})"
             for m, path in MODULES.items() for dep in _imports(path)
             if _layer(dep) in LAYERS and LAYERS.index(_layer(dep)) > LAYERS.index(_layer(m))]
    assert not wrong, wrong


def test_nothing_but_the_cli_imports_the_benchmarks():
    users = [m for m, path in MODULES.items() if _layer(m) not in ("benchmarks", "cli")
             and any(_layer(d) == "benchmarks" for d in _imports(path))]
    assert not users, users


def test_serving_never_imports_training():
    users = [f"{m} imports {d}" for m, path in MODULES.items() if _layer(m) == "serving"
             for d in _imports(path) if _layer(d) == "training"]
    assert not users, users


def test_the_pages_stay_thin():
    """The dashboard (leukviz/ui/) may use any layer below the CLI, but never the CLI, the benchmarks or the
    training loop itself (a page launches training through the run store)."""
    bad = [f"{p.name} imports {d}" for p in (PACKAGE / "ui").glob("*.py") for d in _imports(p)
           if _layer(d) in ("cli", "benchmarks") or d == "training.engine"]
    assert not bad, bad


PAGE_LINES = 250


def test_the_pages_only_draw():
    """No file of the dashboard (leukviz/ui/) over PAGE_LINES lines: what a page decides (which run to show,
    URL restore, recipe switching, defaults, hints) lives in the Streamlit-free page models of leukviz/app/,
    with unit tests; a page that grows past this is deciding things."""
    long = {p.name: n for p in (PACKAGE / "ui").glob("*.py") if (n := len(p.read_text().splitlines())) > PAGE_LINES}
    assert not long, long


def test_the_engine_never_imports_streamlit():
    def streamlit(node: ast.AST) -> bool:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        return any(n.split(".")[0] == "streamlit" for n in names)

    users = [m for m, path in MODULES.items() if _layer(m) != "ui" for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, (ast.Import, ast.ImportFrom)) and streamlit(node)]
    assert not users, users


TORCH_FREE = ["leukviz", "leukviz.api", "leukviz.cli", "leukviz.runstore.runs", "leukviz.models.config", "leukviz.core.storage",
              "leukviz.scoring.metrics"]


def test_entry_points_and_the_cli_import_without_torch():
    """`python -m leukviz --help`, the run store and the settings answer without loading torch (seconds):
    each entry point, every command module (torch only inside the command functions) and the whole parser,
    imported one after another in one fresh interpreter, which names the first that loads torch."""
    assert len(CLI_MODULES) > 2, CLI_MODULES
    code = ("import importlib, sys\n"
            f"for m in {TORCH_FREE + CLI_MODULES!r}:\n"
            "    importlib.import_module(m)\n"
            "    if 'torch' in sys.modules: sys.exit(m + ' loads torch')\n"
            "import leukviz.cli as c; c.build_parser()\n"
            "sys.exit('the parser loads torch' if 'torch' in sys.modules else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_listing_runs_imports_no_scipy_stats(tmp_path):
    """`runs list` (and every page that lists runs) reads summaries: it never resamples, so it does not pay for
    importing scipy.stats (about 0.6 s, half of the command's start-up); the scoring modules import it where
    they resample or test."""
    code = ("import sys\nfrom leukviz.cli import main\n"
            f"main(['runs', 'list', '--json', '--runs-dir', {str(tmp_path)!r}])\n"
            "sys.exit('scipy.stats was imported' if 'scipy.stats' in sys.modules else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_no_import_cycle():
    graph = {name: _imports(path) & set(MODULES) for name, path in MODULES.items()}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join(path + (name,))}"
        if name in done:
            return
        for dep in graph[name]:
            visit(dep, path + (name,))
        done.add(name)

    for name in graph:
        visit(name, ())


def test_no_function_over_80_lines():
    long = [f"{name}.{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for name, path in MODULES.items() for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80]
    assert not long, long


def test_the_training_loop_takes_few_parameters():
    assert len(inspect.signature(engine.train_one_epoch).parameters) <= 7


def test_the_benchmark_shapes_nothing_in_the_training_api():
    """The NCHW ablation wraps the model in the benchmark; training has no knob that only it uses."""
    import dataclasses

    assert "channels_last" not in inspect.signature(engine.setup_training).parameters
    assert "prepare" not in {f.name for f in dataclasses.fields(engine.TrainState)}


def test_only_core_paths_reads_the_leukviz_variables():
    """Every LEUKVIZ_* variable (home, runs, cache and the switches) is named by core/paths.py alone."""
    readers = [(m, node.value) for m, path in MODULES.items() if m != "core.paths"
               for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.Constant) and isinstance(node.value, str)
               and node.value.startswith("LEUKVIZ_") and " " not in node.value]
    assert not readers, readers
    environ = [m for m, path in MODULES.items() if m != "core.paths" and 'environ.get("LEUKVIZ' in path.read_text()]
    assert not environ, environ


def test_the_split_words_have_one_owner():
    """Each split method (config.SPLITS, offered in data.SPLIT_METHODS' order) is worded in runstore/names.py,
    in a sentence and as the Data page's choice; no page words it again."""
    from leukviz.datasets import data
    from leukviz.models import config
    from leukviz.runstore import names

    assert set(config.SPLITS) == set(data.SPLIT_METHODS) == set(names.SPLIT_TEXT) == set(names.SPLIT_CHOICE)
    assert tuple(names.SPLIT_CHOICE) == data.SPLIT_METHODS
    pages = [p.name for p in (PACKAGE / "ui").glob("*.py") if "By subject (recommended)" in p.read_text()]
    assert not pages, pages


def test_model_json_is_read_by_its_owner():
    """The sidecar (filenames.SIDECAR) is read through runfiles.read_sidecar (Run.meta above the run store); below
    the run store only its writer (training/checkpoints.py) and the calibration's class order read it."""
    readers = {"read_json", "loads", "load", "open", "read_text", "read_bytes"}
    owners = {"runstore.runfiles", "training.checkpoints", "scoring.calibration"}

    def reads_sidecar(node: ast.AST) -> bool:
        if not isinstance(node, ast.Call):
            return False
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        return name in readers and "SIDECAR" in ast.unparse(node)

    users = [m for m, path in MODULES.items() if m not in owners
             and any(reads_sidecar(n) for n in ast.walk(ast.parse(path.read_text())))]
    assert not users, users


def test_the_predictions_file_is_parsed_by_its_owner():
    """prob_<class> columns of a run's predictions file: written and read by scoring/predictions.py only (the
    prediction table of Predict and `predict --csv` has its own, in serving)."""
    owners = {"scoring.predictions", "serving.inference", "serving.prediction"}

    def names_prob(node: ast.AST) -> bool:  # f"prob_{c}", startswith("prob_"), removeprefix("prob_")
        return isinstance(node, ast.Constant) and node.value in ("prob_", "prob_raw_")

    users = [m for m, path in MODULES.items() if m not in owners
             and any(names_prob(n) for n in ast.walk(ast.parse(path.read_text())))]
    assert not users, users


def test_each_layer_lists_its_modules():
    """A layer's __init__ names every module it holds (__all__), so the tree reads as the docs say."""
    import importlib

    for pkg in sorted(p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()):
        declared = set(getattr(importlib.import_module(f"leukviz.{pkg.name}"), "__all__", []))
        modules = {p.stem for p in pkg.glob("*.py") if p.stem != "__init__"}
        if pkg.name == "cli":  # the CLI's __all__ is what it re-exports; its modules are the commands
            continue
        assert declared == modules, (pkg.name, sorted(declared ^ modules))



MAX_MODULE_LINES = 500
# Modules still over the limit, each to be split by concept (docs/ARCHITECTURE.md says how); a module leaves the
# list once it is split, and the test fails while a listed one is already under the limit (so the list shrinks).
OVERSIZED: set[str] = set()


def test_no_module_over_500_lines():
    sizes = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    over = sorted(f"{name} ({n} lines)" for name, n in sizes.items() if n > MAX_MODULE_LINES and name not in OVERSIZED)
    assert not over, f"split these by concept: {over}"
    split = sorted(name for name in OVERSIZED if sizes.get(name, 0) <= MAX_MODULE_LINES)
    assert not split, f"under {MAX_MODULE_LINES} lines now: take them off OVERSIZED: {split}"


def _surface_names(path: Path, package: str, surface: str) -> set[str]:
    """The names a module reads from a layer's surface module as `<surface>.X` (where it imported it as
    `from <package> import <surface>`)."""
    tree = ast.parse(path.read_text())
    if not any(isinstance(n, ast.ImportFrom) and n.module == package
               and any(a.name == surface and a.asname is None for a in n.names) for n in ast.walk(tree)):
        return set()
    return {n.attr for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == surface}


def test_callers_use_the_dataset_layers_public_surface():
    """Outside the dataset layer, `data.X` is one of data.__all__: no private name (data._is_image was one), no
    name the layer does not offer."""
    from leukviz.datasets import data

    used = {(name, attr) for name, path in MODULES.items() if _layer(name) != "datasets"
            for attr in _surface_names(path, "leukviz.datasets", "data")}
    outside = sorted(f"{name}: data.{attr}" for name, attr in used if attr not in data.__all__)
    assert not outside, outside
    assert all(hasattr(data, n) for n in data.__all__)


def test_callers_use_the_run_stores_public_surface():
    """runs.py is the run store's surface over one module per concept: outside the run store `runs.X` is one of
    runs.__all__ (no private name, no error class borrowed from below), the surface names no private name, and
    no module of the run store imports it (they import the concept modules)."""
    from leukviz.runstore import runs

    used = {(name, attr) for name, path in MODULES.items() if _layer(name) != "runstore"
            for attr in _surface_names(path, "leukviz.runstore", "runs")}
    outside = sorted(f"{name}: runs.{attr}" for name, attr in used if attr not in runs.__all__)
    assert not outside, outside
    assert all(hasattr(runs, n) and not n.startswith("_") for n in runs.__all__)
    inside = sorted(name for name, path in MODULES.items() if _layer(name) == "runstore" and name != "runstore.runs"
                    and "runstore.runs" in _imports(path))
    assert not inside, inside
