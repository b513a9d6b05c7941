"""One house: the package's imports run one way, lowest layer first.

The layers, lowest first (``LAYERS`` below; a unit is the first name under
``quantum_daemon``: a folder, or a top-level module such as ``daemon``):

0. ``domain``: the vocabulary (bars, timeframes, keys, config, ids, events...).
1. ``core``: pure computation (features, calibration, ensemble, promotion,
   scoring, trust, evaluation, scheduling).
2. ``runtime``, 3. ``storage``, 4. ``web``: the adapters. They are ordered
   among themselves: ``storage`` uses ``runtime`` (backoff, logs, aio), and
   ``web`` (the dashboard) reads ``storage`` (the registry); never the other
   way round.
5. ``models``, 6. ``training``: the worker side. ``training`` runs the
   ``models``; a model never reaches for the training machinery.
7. ``ingest``, ``lifecycle``, ``inference``: the daemon's services. They may
   hand work to the worker side (``training``, ``models``) but they do NOT
   import each other: what two services share moves down to ``domain/`` or
   ``core/``.
8. ``daemon``, ``simulate``: compose the services (the live daemon, the
   replayed loop); they do not import each other either.
9. ``cli``, ``commands``, ``__main__``: the entry points. This is the one
   layer whose units may import each other (a command uses ``cli.load_config``,
   ``cli`` routes to the commands).

The rules, each reported with file and line, all at once:

(a) a ``domain/`` or ``core/`` module imports no I/O or event-loop library
    (``PURE_FORBIDDEN``) and writes no file (``open`` for writing,
    ``Path.write_text`` / ``write_bytes`` / ``mkdir`` / ``touch`` / ``unlink``,
    ``os.replace`` / ``rename`` / ``remove``..., ``shutil``, ``savefig``...);
(b) no module imports a unit of a higher layer, nor another unit of its own
    layer (except in the entry layer), nor the test tooling
    (``quantum_daemon_dev``, ``tests``). Every import counts: at module level,
    inside a function (a lazy import still runs in that process), and under
    ``if TYPE_CHECKING:`` (a type-only arrow still ties the lower layer to
    the higher one: renaming a service would break a ``core`` module);
(c) the daemon's import path (``quantum_daemon.daemon``, ``quantum_daemon.cli``,
    every ``commands`` module and the parser they register) loads none of
    ``quantum_daemon.daemon.HEAVY_MODULES``: model libraries load only in
    worker processes.

A unit missing from ``LAYERS`` is itself a violation: a new folder has to be
placed in the house before it may import anything.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import quantum_daemon

PACKAGE = "quantum_daemon"
ROOT = Path(quantum_daemon.__file__).resolve().parent

LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("domain", frozenset({"domain", "__init__"})),
    ("core", frozenset({"core"})),
    ("runtime", frozenset({"runtime"})),
    ("storage", frozenset({"storage"})),
    ("web", frozenset({"web"})),
    ("models", frozenset({"models"})),
    ("training", frozenset({"training"})),
    ("services", frozenset({"ingest", "lifecycle", "inference", "push"})),
    ("composition", frozenset({"daemon", "simulate"})),
    ("entry", frozenset({"cli", "commands", "__main__"})),
)
RANK = {unit: rank for rank, (_, units) in enumerate(LAYERS) for unit in units}
LAYER_NAME = {unit: name for name, units in LAYERS for unit in units}
OPEN_LAYERS = frozenset({"entry"})  # units of these layers may import each other
PURE_UNITS = frozenset({"domain", "core", "__init__"})
FORBIDDEN_PACKAGES = frozenset({"quantum_daemon_dev", "tests"})

# (a): what a pure module may not import (the module or any submodule of it).
PURE_FORBIDDEN = frozenset(
    {
        "asyncio",
        "redis",
        "hiredis",
        "sqlite3",
        "aiohttp",
        "uvloop",
        "socket",
        "subprocess",
        "multiprocessing",
        "shutil",
        "tempfile",
    }
)
# Calls that write or move files, by the module they hang off.
WRITE_FUNCTIONS = {
    "os": frozenset(
        {
            "replace",
            "rename",
            "renames",
            "remove",
            "unlink",
            "mkdir",
            "makedirs",
            "rmdir",
            "removedirs",
            "link",
            "symlink",
            "truncate",
            "write",
        }
    ),
    "shutil": None,  # every shutil call
    "pickle": frozenset({"dump"}),
    "json": frozenset({"dump"}),
    "np": frozenset({"save", "savez", "savez_compressed", "savetxt"}),
    "numpy": frozenset({"save", "savez", "savez_compressed", "savetxt"}),
}
# Method names that only ever mean a write (Path, DataFrame, ndarray, Figure).
WRITE_METHODS = frozenset(
    {
        "write_text",
        "write_bytes",
        "mkdir",
        "touch",
        "unlink",
        "rmdir",
        "symlink_to",
        "hardlink_to",
        "tofile",
        "to_csv",
        "to_parquet",
        "to_feather",
        "to_pickle",
        "savefig",
    }
)
WRITE_MODES = frozenset("wax+")


@dataclass(frozen=True, order=True)
class Violation:
    path: str  # relative to the scanned package's parent
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join([PACKAGE, *parts])


def unit_of(module: str) -> str | None:
    """The first name under the package, or None outside it."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def imported_modules(
    root: Path, node: ast.Import | ast.ImportFrom, module: str, is_pkg: bool
) -> list[str]:
    """The absolute module names one import statement reaches."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        package = module.split(".") if is_pkg else module.split(".")[:-1]
        base = package[: len(package) - (node.level - 1)]
        target = ".".join([*base, node.module] if node.module else base)
    else:
        target = node.module or ""
    if target == PACKAGE:  # ``from quantum_daemon import daemon``: a name may be a unit
        return [
            f"{PACKAGE}.{alias.name}"
            if (root / alias.name).is_dir() or (root / f"{alias.name}.py").is_file()
            else PACKAGE  # ``from quantum_daemon import __version__``
            for alias in node.names
        ]
    return [target]


def _mode_of(call: ast.Call, position: int) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg == "mode":
            return kw.value
    return call.args[position] if len(call.args) > position else None


def _opens_for_writing(call: ast.Call, position: int) -> bool:
    mode = _mode_of(call, position)
    if mode is None:
        return False
    if isinstance(mode, ast.Constant) and isinstance(mode.value, str):
        return bool(WRITE_MODES & set(mode.value))
    return True  # a mode that is not a literal cannot be shown to be read-only


def file_write(call: ast.Call, aliases: dict[str, str]) -> str | None:
    """What a call writes, or None when it writes no file."""
    func = call.func
    if isinstance(func, ast.Name):
        origin = aliases.get(func.id, func.id)
        if origin == "open" and _opens_for_writing(call, 1):
            return "open() for writing"
        head, _, name = origin.rpartition(".")
        names = WRITE_FUNCTIONS.get(head, frozenset())
        if head in WRITE_FUNCTIONS and (names is None or name in names):
            return f"{origin}()"
        return None
    if not isinstance(func, ast.Attribute):
        return None
    if isinstance(func.value, ast.Name):
        head = aliases.get(func.value.id, func.value.id)
        if head in WRITE_FUNCTIONS:
            names = WRITE_FUNCTIONS[head]
            if names is None or func.attr in names:
                return f"{head}.{func.attr}()"
            return None
    if func.attr in WRITE_METHODS:
        return f".{func.attr}()"
    if func.attr == "open" and _opens_for_writing(call, 0):
        return ".open() for writing"
    return None


def scan_module(root: Path, path: Path) -> list[Violation]:
    module = module_name(root, path)
    unit = unit_of(module)
    assert unit is not None
    rel = str(path.relative_to(root.parent))
    tree = ast.parse(path.read_text(), filename=rel)
    found: list[Violation] = []
    if unit not in RANK:
        found.append(Violation(rel, 1, f"unit {unit!r} has no layer in LAYERS"))
        return found
    rank, pure = RANK[unit], unit in PURE_UNITS
    aliases: dict[str, str] = {}  # local name -> what it was imported as
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    aliases[alias.asname or alias.name.split(".")[0]] = (
                        alias.name if alias.asname else alias.name.split(".")[0]
                    )
            elif node.module and not node.level:
                for alias in node.names:
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            for target in imported_modules(root, node, module, path.name == "__init__.py"):
                top = target.split(".")[0]
                if top in FORBIDDEN_PACKAGES:
                    found.append(Violation(rel, node.lineno, f"imports test tooling {target}"))
                if pure and top in PURE_FORBIDDEN:
                    found.append(
                        Violation(rel, node.lineno, f"{LAYER_NAME[unit]} module imports {target}")
                    )
                other = unit_of(target)
                if other is None or other == unit:
                    continue
                if other not in RANK:
                    found.append(
                        Violation(rel, node.lineno, f"imports {target}: {other!r} has no layer")
                    )
                elif RANK[other] > rank:
                    found.append(
                        Violation(
                            rel,
                            node.lineno,
                            f"{LAYER_NAME[unit]} ({unit}) imports higher layer "
                            f"{LAYER_NAME[other]}: {target}",
                        )
                    )
                elif RANK[other] == rank and LAYER_NAME[unit] not in OPEN_LAYERS:
                    found.append(
                        Violation(
                            rel,
                            node.lineno,
                            f"{unit} imports {target}, another unit of the "
                            f"{LAYER_NAME[unit]} layer",
                        )
                    )
    if pure:
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and (what := file_write(node, aliases)):
                found.append(
                    Violation(rel, node.lineno, f"{LAYER_NAME[unit]} module writes files: {what}")
                )
    return found


def scan(root: Path = ROOT) -> list[Violation]:
    """Every violation of (a) and (b) under the package folder ``root``."""
    found: list[Violation] = []
    for path in sorted(root.rglob("*.py")):
        found += scan_module(root, path)
    return sorted(set(found))


def report(found: list[Violation]) -> str:
    return f"{len(found)} layering violation(s):\n" + "\n".join(f"  {v}" for v in found)


def test_imports_run_one_way_and_core_stays_pure() -> None:
    found = scan()
    assert not found, report(found)


def test_every_unit_has_a_layer() -> None:
    units = {unit_of(module_name(ROOT, p)) or "" for p in ROOT.rglob("*.py")}
    assert units <= RANK.keys(), sorted(u for u in units if u not in RANK)


def _copy_of_package(tmp_path: Path) -> Path:
    copy = tmp_path / PACKAGE
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("__pycache__", "static", "data"))
    return copy


def _inject(path: Path, code: str) -> int:
    """Append ``code`` to a module; the line number it lands on."""
    text = path.read_text()
    if not text.endswith("\n"):
        text += "\n"
    line = text.count("\n") + 1
    path.write_text(text + code + "\n")
    return line


def test_layering_catches_an_upward_import(tmp_path: Path) -> None:
    copy = _copy_of_package(tmp_path)
    before = set(scan(copy))
    line = _inject(copy / "core" / "features.py", "from quantum_daemon.daemon import Daemon")
    lazy = _inject(
        copy / "storage" / "bar_store.py",
        "def _lazy() -> None:\n    from quantum_daemon.ingest import consumer  # noqa: F401",
    )
    typed = _inject(
        copy / "ingest" / "gaps.py",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from quantum_daemon.inference.service import InferenceService",
    )
    new = sorted(set(scan(copy)) - before)
    assert [str(v) for v in new] == [
        f"quantum_daemon/core/features.py:{line}: core (core) imports higher layer "
        "composition: quantum_daemon.daemon",
        f"quantum_daemon/ingest/gaps.py:{typed + 2}: ingest imports "
        "quantum_daemon.inference.service, another unit of the services layer",
        f"quantum_daemon/storage/bar_store.py:{lazy + 1}: storage (storage) imports higher "
        "layer services: quantum_daemon.ingest",
    ], report(new)


def test_layering_catches_io_in_a_pure_module(tmp_path: Path) -> None:
    copy = _copy_of_package(tmp_path)
    before = set(scan(copy))
    line = _inject(
        copy / "domain" / "timeframes.py",
        "import asyncio\nimport os\nfrom pathlib import Path\n"
        "def _dump(p: Path) -> None:\n"
        "    with open(p, 'a') as fh:\n        fh.write('x')\n"
        "    p.write_text('x')\n    os.replace(p, p)\n"
        "    with open(p) as fh:\n        fh.read()\n"
        "    'a'.replace('a', 'b')",
    )
    new = sorted(set(scan(copy)) - before)
    path = "quantum_daemon/domain/timeframes.py"
    assert [str(v) for v in new] == [
        f"{path}:{line}: domain module imports asyncio",
        f"{path}:{line + 4}: domain module writes files: open() for writing",
        f"{path}:{line + 6}: domain module writes files: .write_text()",
        f"{path}:{line + 7}: domain module writes files: os.replace()",
    ], report(new)


def test_the_daemon_import_path_loads_no_model_library() -> None:
    code = (
        "import importlib, pkgutil, sys\n"
        "import quantum_daemon.daemon, quantum_daemon.cli, quantum_daemon.commands\n"
        "for m in pkgutil.iter_modules(quantum_daemon.commands.__path__):\n"
        "    importlib.import_module(f'quantum_daemon.commands.{m.name}')\n"
        "quantum_daemon.cli.build_parser()\n"
        "heavy = quantum_daemon.daemon.HEAVY_MODULES\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = sorted({m.split(".")[0] for m in out.stdout.strip().split(",") if m})
    assert loaded == [], f"the daemon's import path loads model libraries: {loaded}"


def test_heavy_modules_name_every_model_library() -> None:
    from quantum_daemon.daemon import HEAVY_MODULES

    assert HEAVY_MODULES >= {
        "torch",
        "xgboost",
        "lightgbm",
        "ray",
        "talib",
        "gymnasium",
        "cma",
        "stable_baselines3",
        "sklearn",
        "matplotlib",
    }
