"""The package's parts import one way (docs/architecture.md): each module imports only modules of
its own part or of parts below it, and no modules import each other in a loop, whether the import
is at the top of the file or inside a function."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gpt2port"
# the parts from the ground up; a part may import the parts of lower ranks (and itself)
RANKS = {"errors": 0, "console": 0, "config": 1, "slots": 2, "model": 2, "skeleton": 3, "io": 4,
         "text": 5, "engine": 6, "formats": 6, "adapters": 7, "hub": 8, "loading": 9, "proof": 10,
         "conversion": 11, "inspection": 11, "testing": 11, "cli": 12, "__main__": 13,
         "__init__": 13}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The gpt2port modules ``path`` imports, anywhere in it."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(
        ".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if not target.startswith("gpt2port"):
                continue
            for alias in node.names:  # ``from . import formats`` imports a module
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in MODULES else target)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("gpt2port.")}
    return found


def part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}
GRAPH = {module: {target for target in imports(path) if target in MODULES} - {module}
         for module, path in MODULES.items()}


def test_every_module_belongs_to_a_ranked_part():
    assert {part(module) for module in MODULES} <= set(RANKS)


def test_imports_run_down_the_layers():
    upward = [f"{module} -> {target}" for module, targets in GRAPH.items() for target in targets
              if part(target) != part(module) and RANKS[part(target)] >= RANKS[part(module)]
              and module != "gpt2port"]  # the package's face hands every name on
    assert not upward


def test_no_modules_import_each_other_in_a_loop():
    def loop_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            module, route = stack.pop()
            for target in GRAPH[module]:
                if target == start:
                    return route
                if target not in seen and target != "gpt2port":
                    seen.add(target)
                    stack.append((target, [*route, target]))
        return None
    loops = [loop for loop in map(loop_from, GRAPH) if loop]
    assert not loops, loops[0]
