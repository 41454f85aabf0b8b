"""docs/architecture.md maps every module of the package to its one job: the map and the code
list the same modules."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_architecture_map_lists_exactly_the_packages_modules():
    doc = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    mapped = re.findall(r"^\| `(\w+\.py)` \| \S", doc, flags=re.M)
    modules = sorted(p.name for p in (REPO / "src" / "prodesc").glob("*.py") if p.name != "__init__.py")
    assert len(mapped) == len(set(mapped)), "a module is listed twice"
    assert sorted(mapped) == modules
