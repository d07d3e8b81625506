"""The documentation a user reads: the API reference builds cleanly, its cross-references resolve,
every flag says what it does, and the README keeps its promises."""

import importlib
import inspect
import pkgutil
import re
import warnings
from pathlib import Path

import pytest

import seqis
from seqis.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
ROLE = re.compile(r":(?:class|meth|func|mod|attr|data|exc|obj):`~?([\w.]+)`")


def _resolves(target: str, module) -> bool:
    """A cross-reference resolves as a dotted path from a module, from ``module`` itself, or as
    a member of one of ``module``'s classes (a bare method name in a class's docstring)."""
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        if _walk(found, parts[i:]):
            return True
    classes = [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__]
    return any(_walk(owner, parts) for owner in [module, *classes])


def _walk(obj, names) -> bool:
    for name in names:
        if not hasattr(obj, name):
            return False
        obj = getattr(obj, name)
    return True


def _modules():
    yield seqis
    for info in pkgutil.walk_packages(seqis.__path__, "seqis."):
        yield importlib.import_module(info.name)


def test_every_cross_reference_in_a_docstring_resolves():
    broken = [
        (module.__name__, match.group(1))
        for module in _modules()
        for match in ROLE.finditer(inspect.getsource(module))
        if not _resolves(match.group(1), module)
    ]
    assert not broken


def test_the_api_reference_builds_without_a_warning(tmp_path):
    pdoc = pytest.importorskip("pdoc")
    makefile = (ROOT / "Makefile").read_text()
    modules = re.search(r"API_MODULES := (.*?)\n(?!\t)", makefile, re.S).group(1).replace("\\", " ").split()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.render.configure(docformat="restructuredtext")
        pdoc.pdoc(*modules, output_directory=tmp_path)
    assert not [str(w.message) for w in caught if "pdoc" in w.filename]
    assert (tmp_path / "seqis" / "importance" / "schemes.html").exists()


def test_every_flag_of_every_command_says_what_it_does():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    silent = [
        (name, action.option_strings[0])
        for name, command in commands.items()
        for action in command._actions
        if action.option_strings and action.dest != "help" and not (action.help or "").strip()
    ]
    assert not silent


def test_the_package_says_it_is_typed_and_the_readme_keeps_its_promises():
    assert (Path(seqis.__file__).parent / "py.typed").exists()
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 15_000
    assert "seqis[tensorboard]" in readme and "| term |" in readme  # the extra; the glossary
    assert "make docs" in readme
