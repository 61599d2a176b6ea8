"""The package's house rules, read from docs/architecture.md: every module sits on one floor of its
diagram, imports only from its own floor or below (imports inside functions included), and no import
cycle exists; nothing imports the command line or the cohort runner."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lacunes"


def floors() -> dict[str, int]:
    """Module (``inference``, ``training.loop``, ``synthetic``) → floor, from the diagram under
    "Modules, by floor" (parenthesized notes dropped; ``training/{a, b}`` is two modules)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("## Modules, by floor", 1)[1].split("```", 2)[1]
    result, floor = {}, None
    for line in block.splitlines():
        match = re.match(r"^(\d)\s", line)
        if match:
            floor = int(match.group(1))
        line = re.sub(r"\([^()]*\)", " ", line[1:] if match else line)
        for prefix, names in re.findall(r"(\w+)/\{([^}]*)\}", line):
            for name in names.split(","):
                result[f"{prefix}.{name.strip()}"] = floor
        line = re.sub(r"\w+/\{[^}]*\}", " ", line)
        for token in line.split():
            if token.endswith(".py"):
                continue
            result[token.rstrip("/").replace("/", ".")] = floor
    return result


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    found.pop("", None)
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules ``name`` imports (anywhere in it)."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("lacunes"):
                target = node.module.removeprefix("lacunes").lstrip(".")
            else:
                continue
            for alias in node.names:
                full = f"{target}.{alias.name}".lstrip(".")
                out.add(full if full in known else target)
        elif isinstance(node, ast.Import):
            out |= {a.name.removeprefix("lacunes.") for a in node.names if a.name.startswith("lacunes.")}
    return {m for m in out if m in known and m != name}


def floor_of(module: str, table: dict[str, int]) -> int | None:
    """A module's floor; a package's submodules (``synthetic.anatomy``) share the package's."""
    while module:
        if module in table:
            return table[module]
        module = module.rpartition(".")[0]
    return None


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def test_every_module_is_on_a_floor_of_the_diagram():
    table = floors()
    assert {"options", "inference", "cli"} <= set(table) and table["options"] == 0
    missing = sorted(m for m in modules() if m != "training" and floor_of(m, table) is None)
    assert not missing, f"modules missing from docs/architecture.md's floors: {missing}"
    stale = sorted(m for m in table if m not in modules())
    assert not stale, f"docs/architecture.md names modules that do not exist: {stale}"


def test_no_module_imports_from_a_floor_above_it():
    table = floors()
    upward = sorted(f"{a} (floor {floor_of(a, table)}) imports {b} (floor {floor_of(b, table)})"
                    for a, targets in graph().items() for b in targets
                    if a != "training" and (floor_of(b, table) or 0) > (floor_of(a, table) or 0)
                    and not b.startswith(a + "."))
    assert not upward, "\n".join(upward)
    importers = sorted(a for a, targets in graph().items() if targets & {"cli", "runner"} and a != "cli")
    assert importers == [], importers


def test_no_import_cycle():
    edges = graph()
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycle = path[path.index(node):] + [node]
            raise AssertionError("import cycle: " + " → ".join(cycle))
        if node in done:
            return
        for target in sorted(edges[node]):
            if not target.startswith(node + "."):  # a package importing its own submodules
                visit(target, path + [node])
        done.add(node)

    for module in sorted(edges):
        visit(module, [])


def test_the_rules_catch_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The checks above are not vacuous: a module importing upward, and two importing each other, fail."""
    import pytest

    (tmp_path / "lacunes").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "architecture.md").write_text("## Modules, by floor\n\n```\n1  a (the top)   b\n0  c\n```\n")
    (tmp_path / "lacunes" / "__init__.py").write_text("")
    (tmp_path / "lacunes" / "a.py").write_text("from lacunes.b import x\n")
    (tmp_path / "lacunes" / "b.py").write_text("def f():\n    from lacunes import a\n")
    (tmp_path / "lacunes" / "c.py").write_text("from lacunes.a import y\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "lacunes")
    assert floors() == {"a": 1, "b": 1, "c": 0}
    with pytest.raises(AssertionError, match="c \\(floor 0\\) imports a \\(floor 1\\)"):
        test_no_module_imports_from_a_floor_above_it()
    with pytest.raises(AssertionError, match="import cycle: a → b → a"):
        test_no_import_cycle()
