"""Which test files reach which library modules, for bench/mutation.py: through any chain of imports, re-exports and
the helper modules beside the tests, plus the scripts a test runs in-process (AppTest runs ``app/main.py``)."""

from __future__ import annotations

import ast
from pathlib import Path

EXCLUDED_TESTS = {"tests/test_app_browser.py",  # needs Chromium
                  "tests/test_vis_prefilter.py"}  # 4 min (bf16 vs fp32 scans of CIFAR-10), for every import-time line
SCRIPT_TESTS = {"AppTest.from_file": "app.main"}  # text in a test file -> the script it runs in-process


class Imports:
    """The library modules a file reaches through its imports: directly or through re-exports."""

    def __init__(self, root: Path) -> None:
        self.root, self.trees = root, {}

    def file(self, mod: str) -> Path | None:
        base = self.root / mod.replace(".", "/")
        return next((p for p in (Path(f"{base}.py"), base / "__init__.py") if p.is_file()), None)

    def tree(self, mod: str) -> ast.Module:
        if mod not in self.trees:
            self.trees[mod] = ast.parse(self.file(mod).read_text(encoding="utf-8"))
        return self.trees[mod]

    def base(self, here: str, node: ast.ImportFrom) -> str:
        """The absolute module an ``ImportFrom`` in module ``here`` imports from."""
        if not node.level:
            return node.module or ""
        parts = here.split(".")[:None if self.file(here).name == "__init__.py" else -1]
        return ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))

    def origin(self, pkg: str, name: str, depth: int = 0) -> str:
        """Where ``pkg``'s attribute ``name`` comes from: a submodule, a re-exported module's name, or ``pkg``."""
        if self.file(f"{pkg}.{name}"):
            return f"{pkg}.{name}"
        for node in self.tree(pkg).body:
            if isinstance(node, ast.ImportFrom) and depth < 5 and self.file(base := self.base(pkg, node)):
                for a in node.names:
                    if (a.asname or a.name) == name:
                        return self.origin(base, a.name, depth + 1)
        return pkg

    def exported(self, mod: str) -> set[str]:
        """``mod`` and the modules whose names it re-exports in ``__all__``."""
        names = [c.value for n in self.tree(mod).body if isinstance(n, ast.Assign) and "__all__" in ast.unparse(n)
                 for c in ast.walk(n.value) if isinstance(c, ast.Constant)]
        return {mod} | {self.origin(mod, n) for n in names}

    def closure(self, tree: ast.AST, here: str = "") -> set[str]:
        """Every library module ``tree`` reaches, directly or through the modules it imports."""
        out, todo = set(), self.reached(tree, here)
        while todo:
            mod = todo.pop()
            out.add(mod)
            todo |= self.reached(self.tree(mod), mod) - out
        return out

    def reached(self, tree: ast.AST, here: str = "") -> set[str]:
        out = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                out |= {m for a in node.names if self.file(a.name) for m in self.exported(a.name)}
            elif isinstance(node, ast.ImportFrom) and self.file(base := self.base(here, node)):
                for a in node.names:
                    o = self.origin(base, a.name)
                    out |= {base} | (self.exported(o) if o == f"{base}.{a.name}" else {o})
        return out


def test_map(root: Path) -> dict[str, set[str]]:
    """Test file -> the library modules it reaches (through any chain of imports)."""
    imports, out = Imports(root), {}
    for f in sorted((root / "tests").glob("test_*.py")):
        rel = f.relative_to(root).as_posix()
        if rel not in EXCLUDED_TESTS:
            out[rel] = set()
            for text in with_helpers(f):
                out[rel] |= imports.closure(ast.parse(text))
                for script in (s for marker, s in SCRIPT_TESTS.items() if marker in text):
                    out[rel] |= {script} | imports.closure(imports.tree(script), script)
    return out


def with_helpers(test: Path) -> list[str]:
    """The text of ``test`` and of the helper modules beside it that it imports (``from appkit import ...``), so a
    test reaches what its helpers reach."""
    texts, todo, seen = [], [test], set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        texts.append(text := f.read_text(encoding="utf-8"))
        for node in ast.walk(ast.parse(text)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            todo += [h for n in names if (h := test.parent / f"{n}.py").is_file()]
    return texts
