"""The book stays whole: notebooks are committed clean, chapters and notebooks pair up by name,
links between chapters, notebooks and modules resolve, and every notebook runs top to bottom.

Execution uses nbclient with NANOTRANSFORMER_SMALL=1 (the notebooks read it and shrink sizes
and steps), so the plain `pytest` command runs the whole book. Set NANOTRANSFORMER_SKIP_NOTEBOOKS=1
to skip execution while iterating on something else.
"""
import os
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]-*.md"))
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb"))
SOLUTIONS = sorted((ROOT / "notebooks" / "solutions").glob("[0-9][0-9]-*-solutions.ipynb"))
ALL_NOTEBOOKS = NOTEBOOKS + SOLUTIONS


def _ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


def test_the_book_exists():
    assert CHAPTERS and NOTEBOOKS


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=_ids(ALL_NOTEBOOKS))
def test_notebook_is_committed_clean(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i}: has outputs (clear them before committing)"
            assert cell.execution_count is None, f"{path.name} cell {i}: has an execution count"


def test_chapters_and_notebooks_pair_up():
    chapters = {p.stem for p in CHAPTERS}
    notebooks = {p.stem for p in NOTEBOOKS}
    assert chapters == notebooks, f"unpaired: {sorted(chapters ^ notebooks)}"
    solutions = {p.name.removesuffix("-solutions.ipynb") for p in SOLUTIONS}
    assert solutions <= notebooks, f"solutions without a notebook: {sorted(solutions - notebooks)}"


_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _local_links(text):
    for target in _LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # external URL or in-page anchor
        yield target.split("#")[0]


def _markdown_of(path):
    if path.suffix == ".md":
        return path.read_text(encoding="utf-8")
    nb = nbformat.read(path, as_version=4)
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


LINKED = CHAPTERS + ALL_NOTEBOOKS + [ROOT / "README.md", ROOT / "chapters" / "README.md"]


@pytest.mark.parametrize("path", [p for p in LINKED if p.exists()], ids=_ids([p for p in LINKED if p.exists()]))
def test_relative_links_resolve(path):
    missing = [t for t in _local_links(_markdown_of(path)) if t and not (path.parent / t).exists()]
    assert not missing, f"{path.relative_to(ROOT)}: broken links {missing}"


@pytest.mark.parametrize("path", CHAPTERS, ids=_ids(CHAPTERS))
def test_chapter_links_its_notebook(path):
    assert f"../notebooks/{path.stem}.ipynb" in path.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- execution


def _run(path):
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def _stdout(nb):
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "stream")


@pytest.fixture
def small_env(monkeypatch):
    if os.environ.get("NANOTRANSFORMER_SKIP_NOTEBOOKS"):
        pytest.skip("NANOTRANSFORMER_SKIP_NOTEBOOKS is set")
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("NANOTRANSFORMER_SMALL", "1")
    # the kernel is started as "python -m ipykernel_launcher": make it this interpreter
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs(path, small_env):
    out = _stdout(_run(path))
    # the exercise stubs are unfilled in the student notebooks: check() must say so, not crash
    assert "FAILED" not in out
    assert "not implemented yet" in out, f"{path.name}: expected exercise stubs graded by check()"


@pytest.mark.slow
@pytest.mark.parametrize("path", SOLUTIONS, ids=_ids(SOLUTIONS))
def test_solutions_pass_the_checker(path, small_env):
    out = _stdout(_run(path))
    verdicts = re.findall(r"^(\w+): (passed|FAILED|not implemented yet|your function raised)", out, re.M)
    assert verdicts, f"{path.name}: no check() calls"
    bad = [v for v in verdicts if v[1] != "passed"]
    assert not bad, f"{path.name}: {bad}"


# ----------------------------------------------------------------------------- exercise lists


def _exercise_title(body, is_open):
    """An exercise's title: the function it asks for (`name(...)`), or "(open)" for an open one."""
    if is_open:
        return "(open)"
    m = re.search(r"`(\w+)\(", body)
    return m.group(1) if m else f"(no function name in {body[:40]!r})"


def chapter_exercises(path):
    """[(number, title)] from the chapter's "## Exercises" list: `1. **`name(...)`**` or `3. *(Open)* ...`."""
    m = re.search(r"^## Exercises[ \t]*\n(.*?)(?=^## |\Z)", path.read_text(encoding="utf-8"), re.M | re.S)
    if not m:
        return []
    items = re.findall(r"^(\d+)\.[ \t]+(.*)$", m.group(1), re.M)
    return [(int(n), _exercise_title(body, bool(re.match(r"\*\(open\)\*", body, re.I)))) for n, body in items]


def notebook_exercises(path):
    """[(number, title)] from the notebook's `**Exercise N.**` / `**Exercise N (open).**` cells."""
    found = re.findall(r"\*\*Exercise (\d+)( \(open\))?\.\*\*[ \t]*(.*)", _markdown_of(path), re.I)
    return [(int(n), _exercise_title(body, bool(is_open))) for n, is_open, body in found]


@pytest.mark.parametrize("path", CHAPTERS, ids=_ids(CHAPTERS))
def test_chapter_lists_the_notebooks_exercises(path):
    # the chapter's list and the notebook's exercises, open ones included, in the same order
    in_chapter = chapter_exercises(path)
    in_notebook = notebook_exercises(ROOT / "notebooks" / f"{path.stem}.ipynb")
    assert in_notebook, f"{path.stem}.ipynb: no **Exercise N.** cells found"
    assert [n for n, _ in in_notebook] == list(range(1, len(in_notebook) + 1)), f"{path.stem}.ipynb: numbering {in_notebook}"
    assert in_chapter == in_notebook, f"{path.name}: chapter lists {in_chapter}, notebook has {in_notebook}"


def test_exercise_list_extraction_sees_a_difference(tmp_path):
    # the comparison above is only as good as the extraction: a dropped open exercise must show
    ch = tmp_path / "99-x.md"
    ch.write_text("## Exercises\n\n1. **`f(x)`**: a thing.\n2. *(Open)* Think.\n\nNext: ...\n", encoding="utf-8")
    assert chapter_exercises(ch) == [(1, "f"), (2, "(open)")]
    ch.write_text("## Exercises\n\n1. **`f(x)`**: a thing.\n\n## Next\n\n2. not an exercise\n", encoding="utf-8")
    assert chapter_exercises(ch) == [(1, "f")]


_BARE_CHECK = re.compile(r"^check\(", re.M)


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=_ids(ALL_NOTEBOOKS))
def test_check_verdicts_are_not_echoed(path):
    # a cell ending in a bare check(...) call prints its return value, a stray "False" under a stub
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        lines = [ln for ln in cell.source.strip().splitlines() if ln.strip()]
        if cell.cell_type == "code" and lines and _BARE_CHECK.match(lines[-1]) and not lines[-1].rstrip().endswith(";"):
            raise AssertionError(f"{path.name} cell {i}: ends in a bare {lines[-1]!r}: assign it (ok = check(...))")
