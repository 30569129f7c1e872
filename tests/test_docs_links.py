"""The docs' links (scripts/check_links.py, make lint): the checker finds a missing file and a missing section,
and the project's own pages have neither."""

from __future__ import annotations

import pytest

from scripts import check_links

pytestmark = pytest.mark.once


def test_a_missing_file_and_a_missing_section_are_found(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Exit codes\n")
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n## A step's exit code\n\nSee [here](#a-steps-exit-code), [codes](other.md#exit-codes),\n"
                    "[gone](missing.md), [no such](other.md#exit-code) and [web](https://example.com/x#y).\n"
                    "```\n[in code](nowhere.md)\n```\n")
    found = check_links.broken(str(page))
    assert len(found) == 2, found
    assert found[0].endswith(":6: missing.md: no such file")
    assert found[1].endswith(":6: other.md#exit-code: no section #exit-code in " + check_links.os.path.relpath(
        str(tmp_path / "other.md"), check_links.ROOT))


def test_the_projects_pages_have_no_broken_link():
    assert len(check_links.pages()) >= 9
    assert [b for page in check_links.pages() for b in check_links.broken(page)] == []
