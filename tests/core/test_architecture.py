"""The architecture's promises, checked on the source tree: file sizes, a short trainer, algorithms that never
reach the accelerator or an optimiser, and no import circle inside genalign/."""

import ast
import os
import re

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "genalign")


def _modules():
    for d, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                yield (rel[: -len(".__init__")] if rel.endswith(".__init__") else rel), path


def _imports(name, path):
    """Every genalign module ``name`` imports, at any depth of the file (function-level imports included)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    pkg = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("genalign")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("genalign"):
                out.add(mod)
                out |= {f"{mod}.{a.name}" for a in node.names}
    return out


def test_no_file_over_600_lines_and_a_short_trainer():
    too_long = {p: n for _, p in _modules() if (n := sum(1 for _ in open(p, encoding="utf-8"))) > 600}
    assert not too_long, too_long
    assert sum(1 for _ in open(os.path.join(ROOT, "trainer.py"))) <= 400


def test_algorithms_never_touch_the_trainer_the_accelerator_or_an_optimiser():
    banned = re.compile(r"\baccelerat|\boptim(izer|iser)\b|torch\.optim|\.backward\(|zero_grad|lr_scheduler")
    for name, path in _modules():
        if not name.startswith("genalign.algorithms"):
            continue
        src = open(path, encoding="utf-8").read()
        assert not any(m.startswith("genalign.trainer") for m in _imports(name, path)), name
        code = "\n".join(l.split("#", 1)[0] for l in src.splitlines())
        code = re.sub(r'""".*?"""', "", code, flags=re.S)
        hits = [m.group(0) for m in banned.finditer(code)]
        assert not hits, f"{name} uses {hits}"


def test_no_import_circle_inside_genalign():
    mods = dict(_modules())
    graph = {m: {i for i in _imports(m, p) if i in mods and i != m} for m, p in mods.items()}
    # a package's __init__ importing its own submodules is how packages expose them, not a circle
    graph = {m: {i for i in deps if not (i.startswith(m + ".") and mods[m].endswith("__init__.py"))}
             for m, deps in graph.items()}
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, f"{len(cycles)} import circle(s), e.g. {' -> '.join(cycles[0])}"
