"""docs/cdn.md shows the VCL that ships, not an older copy."""

from __future__ import annotations

import re

from tests.servers import REPO


def test_the_vcl_in_the_docs_is_the_shipped_file() -> None:
    doc = (REPO / "docs" / "cdn.md").read_text()
    blocks = re.findall(r"```vcl\n(.*?)```", doc, re.S)
    shipped = (REPO / "deploy" / "varnish" / "default.vcl").read_text()
    assert blocks == [shipped], "paste deploy/varnish/default.vcl into docs/cdn.md"
