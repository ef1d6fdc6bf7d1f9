"""Keep the README's generated parts true: ``python -m tests.sync_docs`` rewrites them."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from proxy.cli import settings_markdown

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"(<!-- settings-table:start -->\n)(.*?)(<!-- settings-table:end -->)", re.S)


def expected_readme(text: str) -> str:
    return _BLOCK.sub(lambda m: m[1] + settings_markdown() + "\n" + m[3], text)


def main() -> int:
    text = README.read_text()
    README.write_text(expected_readme(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
