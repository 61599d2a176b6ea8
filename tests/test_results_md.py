"""benchmarks/results_md.py: a benchmark's section of RESULTS.md and its saved results are replaced
whole or not at all."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from results_md import replace_section, save_json  # noqa: E402


def test_replace_section_replaces_its_own_block_and_appends_a_new_one(tmp_path):
    doc = tmp_path / "RESULTS.md"
    doc.write_text("# Benchmarks\n\n<!-- a:start -->\nold a\n<!-- a:end -->\n\ntail\n")
    replace_section("a", "new a", doc)
    replace_section("b", "first b", doc)
    text = doc.read_text()
    assert "old a" not in text and "<!-- a:start -->\nnew a\n<!-- a:end -->" in text
    assert text.index("tail") < text.index("<!-- b:start -->\nfirst b\n<!-- b:end -->")
    assert [p.name for p in tmp_path.iterdir()] == ["RESULTS.md"]


def test_save_json_keeps_the_previous_results_when_writing_fails(tmp_path):
    saved = tmp_path / "work" / "section.json"
    save_json(saved, [{"found": [17, 27], "model": Path("runs/x.pt")}])
    assert json.loads(saved.read_text()) == [{"found": [17, 27], "model": "runs/x.pt"}]
    looped = []
    looped.append(looped)  # json cannot write a list that holds itself
    with pytest.raises(ValueError):
        save_json(saved, looped)
    assert json.loads(saved.read_text())[0]["found"] == [17, 27]
    assert [p.name for p in saved.parent.iterdir()] == ["section.json"]
