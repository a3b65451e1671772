"""MkDocs hook: the site's home page is README.md, so the two never drift apart.

``docs/index.md`` is a placeholder; at build time its source is replaced by the README with the
README's links into ``docs/`` made relative to the docs folder (``docs/testbed.md`` -> ``testbed.md``)
and its links to files outside ``docs/`` pointed at nothing the strict build would reject."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_as_index(text: str) -> str:
    """The README's markdown with its ``](docs/...)`` links relative to the docs folder."""
    return re.sub(r"\]\(docs/", "](", text)


def on_page_read_source(page, config):
    if page.file.src_uri == "index.md":
        return readme_as_index(README.read_text(encoding="utf-8"))
    return None
