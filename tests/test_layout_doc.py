"""docs/architecture.md section 2 is what rockstar_mp/segment/layout.py gives (`make docs` writes it)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rockstar_mp.config import MonitoringConfig
from rockstar_mp.master.manager import geometry_for
from rockstar_mp.segment.layout import Geometry
from rockstar_mp.segment.layout_doc import BEGIN, END, generated_part, markdown
from tests.helpers import ROOT

DOC = Path(ROOT) / "docs" / "architecture.md"


def layout_doc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rockstar_mp.segment.layout_doc", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_the_architecture_doc_shows_the_layout_as_layout_py_gives_it():
    assert generated_part(DOC.read_text(encoding="utf-8")) == markdown(), (
        "docs/architecture.md section 2 differs from rockstar_mp/segment/layout.py: run `make docs`")


def test_the_doc_states_the_sizes_the_master_uses():
    """The doc's default sizes are a bare Geometry()'s; the master derives its geometry from the config."""
    assert Geometry() == geometry_for(MonitoringConfig())
    assert f"**Total: {geometry_for(MonitoringConfig()).total_size:,} bytes" in generated_part(DOC.read_text())


def test_make_docs_rewrites_only_between_the_markers(tmp_path):
    """A drifted table is found by --check and replaced by --write; the prose around it stays as written."""
    current = DOC.read_text(encoding="utf-8")
    before, after = current.split(BEGIN)[0] + "A hand-written line.\n", "\nAnother one.\n" + current.split(END)[1]
    drifted = markdown().replace(f"{Geometry().total_size:,} bytes", "51,920,896 bytes")
    assert drifted != markdown()
    doc = tmp_path / "architecture.md"
    doc.write_text(f"{before}{BEGIN}\n{drifted}{END}{after}", encoding="utf-8")

    checked = layout_doc("--check", str(doc))
    assert checked.returncode == 1 and "make docs" in checked.stderr, checked
    assert layout_doc("--write", str(doc)).returncode == 0
    assert doc.read_text(encoding="utf-8") == f"{before}{BEGIN}\n{markdown()}{END}{after}"
    assert layout_doc("--check", str(doc)).returncode == 0


def test_a_doc_without_the_markers_is_refused_and_left_whole(tmp_path):
    doc = tmp_path / "architecture.md"
    doc.write_text(f"# No markers\n\n{BEGIN}\nbut no end\n", encoding="utf-8")
    written = layout_doc("--write", str(doc))
    assert written.returncode == 2 and "expected one line" in written.stderr, written
    assert doc.read_text(encoding="utf-8") == f"# No markers\n\n{BEGIN}\nbut no end\n"
