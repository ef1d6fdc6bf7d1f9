"""A bad presets file stops the start: ``cutproxy serve`` and ``cutproxy settings`` exit 2
with a message naming the preset and the field; ``cutproxy presets`` lists a good one."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.servers import REPO, cutproxy, free_port

BAD = {
    "fill": ('[presets.main]\nsize = "1000x1000"\nfill = 1.5\n', "[presets.main] fill"),
    "size": ('[presets.grid]\nsize = "big"\n', "[presets.grid] size"),
    "format": (
        '[presets.cut]\nsize = "500x500"\nbg = "transparent"\nformat = "jpg"\n',
        "[presets.cut] format",
    ),
}


def run(tmp_path: Path, *args: str, presets: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PROXY_PRESETS_FILE": str(presets),
        "PROXY_DATA_DIR": str(tmp_path / "data"),
    }
    return subprocess.run(
        cutproxy(*args), env=env, capture_output=True, text=True, timeout=60, cwd=REPO
    )


@pytest.mark.parametrize("field", sorted(BAD))
@pytest.mark.parametrize("command", ["serve", "settings"])
def test_a_bad_presets_file_stops_the_start_naming_preset_and_field(
    tmp_path: Path, command: str, field: str
) -> None:
    text, named = BAD[field]
    path = tmp_path / "presets.toml"
    path.write_text(text)
    args = ("serve", "--port", str(free_port())) if command == "serve" else ("settings",)
    result = run(tmp_path, *args, presets=path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"PROXY_PRESETS_FILE: {named}" in result.stderr
    assert "cutproxy on http" not in result.stdout  # nothing was served


def test_cutproxy_presets_lists_the_example_file(tmp_path: Path) -> None:
    result = run(tmp_path, "presets", "--json", presets=REPO / "docs" / "presets.example.toml")
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)["presets"]
    main = next(p for p in listed if p["name"] == "main")
    assert (main["width"], main["height"], main["bg"], main["fill"]) == (1600, 1600, "ffffff", 0.85)
