"""The package's shape: no import cycles, a fast torch-free `--help`, a Lightning-free `eda`,
registries whose every entry works, and a Python API that the CLI is built on."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in (SRC / "podium").rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(tree: ast.Module, module: str, known: set[str], top_level_only: bool) -> set[str]:
    """podium modules imported by ``tree`` (``from podium.a import b`` counts podium.a.b when b is a module)."""
    out: set[str] = set()
    nodes = list(tree.body)
    while nodes:
        node = nodes.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("podium"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in known else node.module)
        if not top_level_only or isinstance(node, (ast.If, ast.Try)):
            nodes.extend(ast.iter_child_nodes(node))
    out.discard(module)
    return {m for m in out if m in known}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        graph[name] = _imports(ast.parse(path.read_text()), name, known, top_level_only)
    return graph


def test_no_import_cycles_between_podium_modules():
    """Module-level imports form a DAG (what Python executes at import time)."""
    assert _cycles(_graph(top_level_only=True)) == []


def test_no_cycles_even_through_function_level_imports():
    """Imports deferred into functions (to keep `--help` fast) do not hide a cycle either."""
    cycles = _cycles(_graph(top_level_only=False))
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["predict", "--help"], ["cv", "--help"],
                                  ["eda", "--help"], ["config", "--help"], ["export", "--help"], ["serve", "--help"],
                                  ["lr-find", "--help"], ["audit", "--help"]])
def test_help_imports_no_torch(argv):
    code = ("import sys\nfrom podium.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass")
    loaded = _loaded_after(code)
    assert "torch" not in loaded and "lightning" not in loaded


def test_import_podium_is_light():
    loaded = _loaded_after("import podium; podium.__all__")
    assert "torch" not in loaded and "pandas" not in loaded


def test_eda_imports_no_lightning(tmp_path):
    from conftest import make_folder

    data = make_folder(tmp_path / "train", {"cat": 3, "dog": 3})
    code = (f"from podium.cli import main\nassert main(['eda', {str(data)!r}, 'output.dir={tmp_path}/runs']) == 0")
    loaded = _loaded_after(code)
    assert not any(m == "lightning" or m.startswith(("lightning.", "pytorch_lightning")) for m in loaded)


def test_public_api_is_declared_and_resolves():
    import podium

    assert podium.__all__ and all(callable(getattr(podium, name)) or isinstance(getattr(podium, name), type)
                                  for name in podium.__all__)


def test_api_errors_are_podium_errors_with_the_dotted_key():
    from podium.api import config as make_config
    from podium.errors import PodiumError

    with pytest.raises(PodiumError, match=r"train\.lossx.*Did you mean 'train\.loss'"):
        make_config(train={"lossx": "ce"})
    with pytest.raises(PodiumError, match=r"train\.loss: unknown loss 'cee'.*Did you mean 'ce'"):
        make_config(None, "train.loss=cee")


def test_only_rundir_spells_the_run_folder_file_names():
    """rundir.py owns the run/cv/ensemble folder contract: every other module uses its constants
    and readers, so a file name (and what "best checkpoint" means) is decided in one place."""
    from podium import rundir

    names = {v for k, v in vars(rundir).items() if k.endswith("_FILE") or k.endswith("_CHECKPOINT")}
    assert {"summary.json", "classes.json", "best.ckpt", "oof_predictions.parquet", "ensemble.json"} <= names
    offenders = []
    for path in (SRC / "podium").rglob("*.py"):
        if path.name == "rundir.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno} {node.value!r}")
    assert offenders == []


def test_cli_commands_call_the_public_api():
    """Every `cmd_*` of the CLI reaches the library through `podium.<name>` (the public API), so
    the notebook API never lags the commands; argparse objects never enter the library."""
    from podium import cli

    lagging = []
    for module_name in cli.COMMAND_MODULES:
        path = SRC / Path(*module_name.split(".")).with_suffix(".py")
        for node in ast.parse(path.read_text()).body:
            if not (isinstance(node, ast.FunctionDef) and node.name.startswith("cmd_")):
                continue
            calls = {n.value.id for n in ast.walk(node) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}
            imports_internal = [n for n in ast.walk(node) if isinstance(n, ast.ImportFrom) and n.module
                                and n.module.startswith("podium.") and not n.module.startswith(("podium.cli", "podium.errors"))
                                and not all(a.name[0].isupper() for a in n.names)]  # settings types and constants
            if "podium" not in calls or imports_internal:
                lagging.append(f"{module_name}.{node.name}")
    assert lagging == []
