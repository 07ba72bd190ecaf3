"""The shape of the code (issue [I]): one data path, checked mechanically.

- no import circle inside ``interp`` (module-level and function-level imports both count);
- raw hook registration only in the capture / intervention core;
- report.json written only by the report writer;
- one experiment module with ``Config`` and ``run`` per paper;
- every analyzer class is a scikit-learn estimator that ``clone`` and ``get_params`` handle.
"""
import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import interp

ROOT = Path(interp.__file__).parent
# nnsight_backend.py: a backend (like tl_backend) — it guards base_model while sites are recorded
CORE = {"arch.py", "model.py", "capture.py", "intervene.py", "tl_backend.py", "nnsight_backend.py"}
PAPERS = ["refusal", "harmfulness", "numeric", "binding", "rank", "sae", "patching", "steering"]


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """interp modules that ``name`` imports anywhere in its body."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            cands = [mod] + [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            cands = [a.name for a in node.names]
        else:
            continue
        for c in cands:
            if c in known and c != name:
                found.add(c)
    return found


def test_no_import_circle():
    mods = _modules()
    known = set(mods)
    graph = {m: _imports(m, p, known) for m, p in mods.items()}
    # a package importing its own submodules (re-exports) is not a circle worth reporting
    for m in graph:
        graph[m] = {d for d in graph[m] if not (d.startswith(m + ".") or m.startswith(d + ".") and
                                                 mods[d].name == "__init__.py")}
    cycles = []
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_raw_hooks_only_in_the_core():
    offenders = []
    for path in ROOT.rglob("*.py"):
        if path.name in CORE and path.parent == ROOT:
            continue
        # a benchmark may drive another library's own hooks for comparison, marked on the line
        text = "\n".join(x for x in path.read_text(encoding="utf-8").splitlines() if "noqa: raw-hook" not in x)
        for pat in (r"\.hooks\(", r"register_forward_hook", r"register_forward_pre_hook", r"register_full_backward"):
            for m in re.finditer(pat, text):
                line = text.count("\n", 0, m.start()) + 1
                offenders.append(f"{path.relative_to(ROOT)}:{line}")
    assert not offenders, "raw hooks outside the core: " + ", ".join(offenders)


def test_private_model_attributes_stay_in_the_core():
    """Architecture facts live in arch.py (BlockLayout) and the Model; nothing else reaches inside."""
    pat = re.compile(r"\._(layers|layout|register|block|unembed|run_upper_blocks|intervention_state)\b"
                     r"|arch\._get|from \.+arch import [^\n]*\b_get\b")
    offenders = []
    for path in ROOT.rglob("*.py"):
        if path.parent == ROOT and path.name in CORE | {"generation.py"}:
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pat.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{i}")
    assert not offenders, "private model attributes used outside the core: " + ", ".join(offenders)


def test_report_json_written_only_by_the_report_writer():
    offenders = []
    for path in ROOT.rglob("*.py"):
        if path.name == "report.py" and path.parent == ROOT:
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "report.json" in line and re.search(r"write_text|open\(|json\.dump\(", line):
                offenders.append(f"{path.relative_to(ROOT)}:{i}")
    assert not offenders, "report.json written outside interp/report.py: " + ", ".join(offenders)


@pytest.mark.parametrize("paper", PAPERS)
def test_one_experiment_per_paper(paper):
    mod = importlib.import_module(f"interp.experiments.{paper}")
    assert inspect.isfunction(mod.run)
    params = list(inspect.signature(mod.run).parameters)
    assert params[:3] == ["model", "config", "out"], params
    from dataclasses import fields, is_dataclass

    assert is_dataclass(mod.Config)
    assert len(fields(mod.Config)) > 0
    mod.Config()  # every knob has a default


def _analyzer_classes():
    import interp.analyzers as pkg

    out = []
    for info in pkgutil.iter_modules(pkg.__path__):
        mod = importlib.import_module(f"interp.analyzers.{info.name}")
        for name, cls in inspect.getmembers(mod, inspect.isclass):
            if cls.__module__ == mod.__name__ and hasattr(cls, "fit") and not name.startswith("_"):
                out.append(cls)
    return out


@pytest.mark.parametrize("cls", _analyzer_classes(), ids=lambda c: c.__name__)
def test_every_analyzer_is_a_sklearn_estimator(cls):
    from sklearn.base import BaseEstimator, clone

    assert issubclass(cls, BaseEstimator), f"{cls.__name__} does not subclass sklearn.base.BaseEstimator"
    est = cls()
    params = est.get_params()
    twin = clone(est)
    assert twin.get_params() == params and twin is not est
    est.set_params(**params)
