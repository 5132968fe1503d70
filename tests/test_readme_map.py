"""README's file map (section "Files") and the tree stay equal (issue 9: names say what they are)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIRS = ("tasks", "watchme", "files", "templates", "group_data")


def _tree() -> set[str]:
    found = {"deploy.py", "inventory.py"}
    for d in DIRS:
        found |= {str(p.relative_to(ROOT)) for p in (ROOT / d).iterdir()
                  if p.is_file() and p.name != "__init__.py" and p.suffix != ".pyc"}
    return found


def _mapped() -> set[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Files (one concern each)", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([^`]+)` \|", section, flags=re.M))


def test_every_file_is_in_the_readme_map_and_nothing_else():
    tree, mapped = _tree(), _mapped()
    assert not tree - mapped, f"add to README's Files section: {sorted(tree - mapped)}"
    assert not mapped - tree, f"README's Files section names missing files: {sorted(mapped - tree)}"
