"""`watchme docs`: every service in the overview, and a Mermaid block GitHub can render."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests import replica
from watchme import docs, importer
from watchme.registry import load

ROOT = Path(__file__).resolve().parent.parent
MERMAID_JS = ROOT / "tests" / "mermaid_check.mjs"
# mermaid's own parser (npm: mermaid + jsdom), installed once per machine outside the repo:
#   npm install --prefix ~/.cache/watchme/mermaid --no-audit --no-fund mermaid@11.17.2 jsdom@29.1.1
MERMAID_DIR = Path(os.environ.get("WATCHME_MERMAID_DIR",
                                  Path.home() / ".cache" / "watchme" / "mermaid"))


def mermaid_block(text: str) -> str:
    blocks = re.findall(r"^```mermaid\n(.*?)^```$", text, flags=re.S | re.M)
    assert len(blocks) == 1, "exactly one mermaid block"
    return blocks[0]


def check_mermaid(block: str) -> list[str]:
    """Structural checks of a flowchart (what breaks GitHub's renderer most often)."""
    problems = []
    lines = block.strip().splitlines()
    if not re.fullmatch(r"flowchart (LR|TD|TB|RL|BT)", lines[0]):
        problems.append(f"first line {lines[0]!r} is not a flowchart header")
    depth = 0
    ids = set()
    for line in lines[1:]:
        s = line.strip()
        if s == "end":
            depth -= 1
            if depth < 0:
                problems.append("`end` without subgraph")
            continue
        if s.startswith("subgraph "):
            depth += 1
        # every label is quoted, and quotes inside labels are escaped
        unquoted = re.sub(r'"[^"]*"', "", s)
        if re.search(r"[\[\](){}|]", re.sub(r"\(\[|\]\)|\[|\]|\|", "", unquoted).replace("-->", "")):
            problems.append(f"unquoted label text in {s!r}")
        for node in re.findall(r'(?:^|-->\s*(?:\|"[^"]*"\|\s*)?|subgraph\s+)([^\s\[\(|"]+)', s):
            if node.lower() == "end" or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", node):
                problems.append(f"unsafe node id {node!r} in {s!r}")
            ids.add(node)
        if s.count('"') % 2:
            problems.append(f"unbalanced quotes in {s!r}")
    if depth != 0:
        problems.append(f"{depth} subgraph(s) without `end`")
    return problems


def test_overview_lists_every_service_with_its_route_ip_and_memory():
    reg = load()
    text = docs.overview(reg)
    for s in reg.services:
        row = next(l for l in text.splitlines() if l.startswith(f"| {s.name} "))
        assert f"`{s.container}`" in row and f"`{s.public_path}`" in row
        assert f"`{s.upstream_url}`" in row and s.memory_limit in row
        assert (str(s.ip) if s.ip else "not on the network") in row
    assert "172.27.0.0/16" in text and "172.27.0.1" in text


def test_mermaid_has_every_route_upstream_and_container():
    reg = load()
    block = mermaid_block(docs.overview(reg))
    assert check_mermaid(block) == []
    for s in reg.services:
        up, c = docs.node_id("up", s.name), docs.node_id("c", s.name)
        assert f'nginx -->|"{s.public_path}"| {up}' in block
        assert f"{up} --> {c}" in block
        assert f'{c}["{s.container}' in block


def test_labels_with_quotes_and_names_with_dots_stay_valid(tmp_path):
    data = yaml.safe_load((ROOT / "group_data" / "services.yaml").read_text())
    data["services"][0]["description"] = 'The "vault" | gateway'
    data["services"][0]["container"] = "vault.api_v2"
    data["services"][0]["ip"] = None
    path = tmp_path / "services.yaml"
    path.write_text(yaml.safe_dump(data))
    assert docs.main(["--registry", str(path), "--output", str(tmp_path / "out.md")]) == 0
    text = (tmp_path / "out.md").read_text()
    block = mermaid_block(text)
    assert check_mermaid(block) == []
    assert "vault.api_v2 (not on watchme-network)" in block
    assert 'The \\"vault\\"' not in text and "The \"vault\" \\| gateway" in text


def test_the_checker_catches_broken_diagrams():
    assert check_mermaid('flowchart LR\n    a-b["x"]\n') != []
    assert check_mermaid('flowchart LR\n    subgraph n["x"]\n    a["y"]\n') != []
    assert check_mermaid('flowchart LR\n    a[x (y)]\n') != []
    assert check_mermaid('flowchart LR\n    end["x"]\n') != []


def test_bad_registry_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("services: [{name: x}]\n")
    assert docs.main(["--registry", str(path)]) == 2
    assert "services[x]" in capsys.readouterr().err


@pytest.mark.skipif(not (shutil.which("node") and (MERMAID_DIR / "node_modules" / "mermaid").is_dir()),
                    reason=f"mermaid's own parser is not installed in {MERMAID_DIR} (see above)")
def test_mermaid_parses_with_mermaids_own_parser(tmp_path):
    # node resolves imports next to the script: run a copy inside the install directory
    script = MERMAID_DIR / MERMAID_JS.name
    shutil.copy(MERMAID_JS, script)
    block = mermaid_block(docs.overview(load()))
    src = tmp_path / "diagram.mmd"
    src.write_text(block)
    r = subprocess.run(["node", str(script), str(src)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    src.write_text(block.replace("    end\n", "", 1))
    r = subprocess.run(["node", str(script), str(src)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0, "the parser must reject a subgraph without end"


def test_docs_of_the_imported_replica(tmp_path):
    """The overview of what the replica runs (imported from its recorded facts)."""
    registry = tmp_path / "imported.yaml"
    assert importer.main(["--facts", str(ROOT / "tests" / "fixtures" / "replica" / "live.json"),
                          "--output", str(registry), "--allow-unexpressed"]) == 0
    out = tmp_path / "overview.md"
    assert docs.main(["--registry", str(registry), "--output", str(out)]) == 0
    text = out.read_text()
    block = mermaid_block(text)
    assert check_mermaid(block) == []
    for s in replica.services():
        assert f"`{s.container}`" in text and f"`{s.public_path}`" in text
        assert f"`http://localhost:{s.port}{s.upstream_path}`" in text
    assert '"watchme-avatar-uploader (not on watchme-network)"' in block
    assert "http://localhost:8015/api/scheduler/" in block
