"""The README stays short, every relative Markdown link resolves, and every docs page is linked from the README."""
import re

import pytest

from tests.helpers import REPO_ROOT

README = REPO_ROOT / "README.md"
DOCS = sorted((REPO_ROOT / "docs").glob("*.md"))
LINKED_FILES = [README, *DOCS, REPO_ROOT / "deploy/helm/doc-triton/README.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(path):
    for target in LINK.findall(path.read_text()):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        yield target.split("#", 1)[0]


def test_readme_is_at_most_200_lines():
    assert len(README.read_text().splitlines()) <= 200


@pytest.mark.parametrize("path", LINKED_FILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_relative_links_resolve(path):
    missing = [t for t in relative_links(path) if not (path.parent / t).exists()]
    assert not missing, f"{path.relative_to(REPO_ROOT)} links to missing files: {missing}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(REPO_ROOT / t).resolve() for t in relative_links(README)}
    unlinked = [p.name for p in DOCS if p.resolve() not in linked]
    assert DOCS and not unlinked, f"README.md does not link docs/{unlinked}"
