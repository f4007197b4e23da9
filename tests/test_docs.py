"""The documentation site in docs/: it builds strictly, and its code runs as written.

Every fenced ```python block of a page runs: the page's blocks in order, as one script, in a
fresh interpreter whose working directory is an empty temporary folder (no server: pages use
`WorkflowTester` or Celery's in-memory broker and backend). A block right after the line
`<!-- fragment -->` is not run (it shows a piece of a larger program); one right after
`<!-- file: PATH -->` is a file of a project the page lays out, written to PATH in that folder
before the script runs. Blocks in other languages (```bash, ```text, ...) are not run.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import textwrap
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from ergate_celery.settings import ErgateSettings

from .support import run_captured, user_env

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
BIN = Path(sys.executable).parent
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.DOTALL | re.MULTILINE,
)
MARKER = re.compile(r"<!-- (?P<kind>fragment|file)(?:: (?P<path>[^>]+?))? -->")
# "issue 26", "issues #12", "kombu#337", "#26": what a user of the docs cannot look up.
ISSUE_REFERENCE = re.compile(r"(?i)\bissues?\s*#?\d+|\w#\d+\b|(?<![\w&])#\d{2,}\b")


@dataclass(frozen=True)
class Block:
    """A fenced code block of a page, with the marker on the line before it (if any)."""

    lang: str
    body: str
    marker: str | None
    path: str | None
    line: int


def blocks_of(page: Path) -> list[Block]:
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        marker = MARKER.fullmatch(before)
        found.append(
            Block(
                lang=match["lang"],
                body=textwrap.dedent(match["body"]),
                marker=marker["kind"] if marker else None,
                path=marker["path"] if marker else None,
                line=text.count("\n", 0, match.start()) + 1,
            )
        )
    return found


def write_files(page: Path, folder: Path) -> list[str]:
    """The page's `<!-- file: PATH -->` blocks written into `folder`; their paths."""
    paths = []
    for block in blocks_of(page):
        if block.marker == "file":
            assert block.path is not None
            target = folder / block.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.body)
            paths.append(block.path)
    return paths


def script_of(page: Path) -> str:
    """The page's python blocks that run, in order, as one script ("" when none does)."""
    return "\n".join(
        f"# {page.name}, line {block.line}\n{block.body}"
        for block in blocks_of(page)
        if block.lang == "python" and block.marker is None
    )


RUNNABLE = [page for page in PAGES if script_of(page)]


@pytest.mark.parametrize("page", RUNNABLE, ids=[page.name for page in RUNNABLE])
def test_page_code_runs_as_written(page: Path, tmp_path: Path) -> None:
    write_files(page, tmp_path)
    (tmp_path / "page.py").write_text(script_of(page))

    result = run_captured([sys.executable, "page.py"], tmp_path, user_env())

    assert result.returncode == 0, (
        f"the python blocks of docs/{page.name} failed (mark a block that is a piece of a "
        f"larger program with <!-- fragment --> on the line before it):\n{result.stderr}"
    )


def test_testing_page_project_passes_its_own_tests(tmp_path: Path) -> None:
    """The testing page's files are a project with its tests: pytest runs them, no server."""
    files = write_files(DOCS / "testing.md", tmp_path)
    assert sorted(files) == [
        "conftest.py",
        "shop/workflows.py",
        "tests/test_refunds.py",
        "tests/test_with_a_worker.py",
    ]
    (tmp_path / "shop" / "__init__.py").write_text("")

    result = run_captured(
        [str(BIN / "pytest"), "-q", "-p", "no:cacheprovider"], tmp_path, user_env()
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


@pytest.mark.parametrize("page", [*PAGES, ROOT / "README.md"], ids=lambda page: page.name)
def test_page_names_no_issue_or_internal_document(page: Path) -> None:
    text = page.read_text()
    assert "DESIGN.md" not in text, f"{page.name} names DESIGN.md, which users do not have"
    found = ISSUE_REFERENCE.findall(text)
    assert not found, f"{page.name} refers to issue numbers users cannot look up: {found}"


def test_every_setting_is_documented_and_nothing_else() -> None:
    documented = set(re.findall(r"^\| `(ergate_\w+)` \|", (DOCS / "settings.md").read_text(), re.M))
    read = {f"ergate_{field.name}" for field in fields(ErgateSettings)}
    assert sorted(read - documented) == [], "settings missing from docs/settings.md's table"
    assert sorted(documented - read) == [], "docs/settings.md documents settings not read"


def test_readme_links_point_at_files_in_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\((?!https?://|#)([^)#\s]+)", readme)
    assert links, "the README links to the docs"
    missing = [link for link in links if not (ROOT / link).exists()]
    assert missing == [], f"README.md links to files that do not exist: {missing}"


def test_site_builds_strictly(tmp_path: Path) -> None:
    """`make docs`: a broken link, a page left out of the nav or a bad reference fails."""
    mkdocs = shutil.which("mkdocs", path=str(BIN))
    assert mkdocs is not None, "mkdocs is missing: pip install -e '.[docs]' (make install)"

    site = tmp_path / "site"
    result = run_captured([mkdocs, "build", "--strict", "--site-dir", str(site)], ROOT, os.environ)

    assert result.returncode == 0, result.stdout + result.stderr
    assert (site / "api" / "index.html").exists()
