"""The documentation cannot rot: the site builds in strict mode, every shell and Python block of
README.md and docs/*.md is run by a test or says why not, and the generated regions are what
scripts/docs_pages.py writes from the code today."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from markdown_blocks import CHECKED_LANGUAGES, ROOT, blocks_of, claims, pages


def _docs_pages():
    spec = importlib.util.spec_from_file_location("docs_pages", ROOT / "scripts" / "docs_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DOCS_PAGES = _docs_pages()


def unaccounted_blocks(root=ROOT, claimed=None) -> list[str]:
    """Every checked block that is neither claimed by a test nor marked not run, and every
    claim of a block that is not there."""
    claimed = claims(root / "tests") if claimed is None else claimed
    problems, present = [], set()
    for path in pages(root):
        for b in blocks_of(path, root):
            if b.run_name:
                present.add((b.page, b.run_name))
            if b.language not in CHECKED_LANGUAGES:
                continue
            if b.run_name and (b.page, b.run_name) not in claimed:
                problems.append(f"{b.page}:{b.line}: 'run: {b.run_name}' but no test runs it")
            elif not b.run_name and not b.not_run_reason:
                problems.append(
                    f"{b.page}:{b.line}: a {b.language} block neither run by a test nor "
                    "preceded by <!-- not run: REASON -->"
                )
    problems += [
        f"{page}: a test claims 'run: {name}', not there" for page, name in claimed - present
    ]
    return problems


def test_site_builds_in_strict_mode(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    for page in ("quickstart", "http_api", "operating", "model_cards"):
        assert (tmp_path / page / "index.html").stat().st_size > 0
    quickstart = (tmp_path / "quickstart" / "index.html").read_text()
    assert "/sample_task/submit" in quickstart  # README's curl examples, included
    assert (tmp_path / "checkpoints" / "ddpm" / "samples_ddim_50.png").exists()  # the hook


def test_every_shell_and_python_block_is_run_by_a_test_or_marked_not_run():
    assert unaccounted_blocks() == []


def test_an_unmarked_block_or_a_stale_claim_is_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "README.md").write_text(
        "text\n\n```bash\necho unmarked\n```\n\n<!-- not run: needs a server -->\n```sh\nls\n```\n"
    )
    (tmp_path / "docs" / "page.md").write_text(
        "<!-- run: claimed -->\n```python\nprint(1)\n```\n"
        "<!-- run: unclaimed -->\n\n```python\nprint(2)\n```\n```json\n{}\n```\n"
    )
    claimed = {("docs/page.md", "claimed"), ("docs/page.md", "gone")}
    problems = unaccounted_blocks(tmp_path, claimed)
    assert problems == [
        "README.md:3: a bash block neither run by a test nor preceded by <!-- not run: REASON -->",
        # the marker with a blank line before the fence does not count
        "docs/page.md:7: a python block neither run by a test nor preceded by "
        "<!-- not run: REASON -->",
        "docs/page.md: a test claims 'run: gone', not there",
    ]


@pytest.mark.parametrize("region", sorted(DOCS_PAGES.REGIONS))
def test_generated_region_is_what_the_code_says_today(region):
    page, text, regenerated = DOCS_PAGES.regenerated(region)
    assert text == regenerated, f"{page.name} is stale: run python scripts/docs_pages.py"
