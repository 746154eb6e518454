"""Rewrite the README's method and measure tables from the registries.

The tables sit between ``<!-- methods:begin -->`` / ``<!-- methods:end -->`` and
``<!-- measures:begin -->`` / ``<!-- measures:end -->``; tests/test_structure.py fails while
they differ from ``kedit ls methods --markdown`` and ``kedit ls metrics --markdown``.

    .venv/bin/python scripts/sync_readme.py
"""

from __future__ import annotations

import re
from pathlib import Path

from kedit.console import markdown_measures, markdown_methods

README = Path(__file__).resolve().parents[1] / "README.md"


def main() -> None:
    text = README.read_text()
    for marker, table in (("methods", markdown_methods), ("measures", markdown_measures)):
        pattern = rf"(<!-- {marker}:begin -->\n).*?(\n<!-- {marker}:end -->)"
        if not re.search(pattern, text, re.S):
            raise SystemExit(f"README.md has no <!-- {marker}:begin/end --> markers")
        text = re.sub(pattern, lambda m, t=table: m.group(1) + t() + m.group(2), text, flags=re.S)
    README.write_text(text)
    print(f"updated {README}")


if __name__ == "__main__":
    main()
