"""tools/sync_results.py: the docs' results tables are the files a run wrote."""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("sync_results", f"{ROOT}/tools/sync_results.py")
sync_results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sync_results)


def test_every_results_table_in_the_docs_is_its_copy_in_docs_results():
    assert sync_results.check() == []


def page(root, text):
    (root / "docs").mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text(text)


def test_sync_fills_the_blocks_and_check_finds_a_retyped_figure(tmp_path):
    root, run = tmp_path / "repo", tmp_path / "run"
    (run / "results").mkdir(parents=True)
    (run / "results" / "t.md").write_text("| a | b |\n|---|---|\n| 1 | 2 |\n")
    (run / "results" / "t.json").write_text("{}")
    page(root, "intro\n<!-- results: t.md -->\nold table\n<!-- /results -->\nafter\n")
    assert sync_results.sync(str(run), str(root)) == ["t.md"]
    text = (root / "README.md").read_text()
    assert (
        text
        == "intro\n<!-- results: t.md -->\n| a | b |\n|---|---|\n| 1 | 2 |\n<!-- /results -->\nafter\n"
    )
    assert (root / "docs" / "results" / "t.json").exists()
    assert "--run-dir" in (root / "docs" / "results" / "SOURCE.md").read_text()
    assert sync_results.check(str(root)) == []
    (root / "README.md").write_text(text.replace("| 1 | 2 |", "| 1 | 3 |"))  # retyped
    assert sync_results.check(str(root)) == ["README.md: t.md"]


def test_a_table_the_run_lacks_writes_nothing(tmp_path):
    root, run = tmp_path / "repo", tmp_path / "run"
    (run / "results").mkdir(parents=True)
    page(root, "<!-- results: missing.md -->\nx\n<!-- /results -->\n")
    with pytest.raises(FileNotFoundError, match="missing.md"):
        sync_results.sync(str(run), str(root))
    assert (
        root / "README.md"
    ).read_text() == "<!-- results: missing.md -->\nx\n<!-- /results -->\n"
    assert not (root / "docs" / "results").exists()


def test_a_prefixed_block_comes_from_its_own_run_only(tmp_path):
    root, agent, paper = tmp_path / "repo", tmp_path / "agent", tmp_path / "paper"
    for run, figure in ((agent, "1"), (paper, "2")):
        (run / "results").mkdir(parents=True)
        (run / "results" / "t.md").write_text(f"| x |\n|---|\n| {figure} |\n")
    (paper / ".paper").mkdir()
    (paper / ".paper" / "times.txt").write_text("07 793 s\n")
    text = "<!-- results: t.md -->\n<!-- /results -->\n<!-- results: paper/t.md -->\n<!-- /results -->\n"
    page(root, text)
    assert sync_results.sync(str(agent), str(root)) == ["t.md"]
    assert "| 1 |" in (root / "README.md").read_text()
    assert "| 2 |" not in (root / "README.md").read_text()
    assert sync_results.check(str(root)) == ["README.md: paper/t.md (no docs/results/paper/t.md)"]
    assert sync_results.sync(str(paper), str(root), prefix="paper") == ["paper/t.md"]
    filled = (root / "README.md").read_text()
    assert filled.index("| 1 |") < filled.index("| 2 |")
    assert (root / "docs" / "results" / "paper" / "t.md").read_text() == "| x |\n|---|\n| 2 |\n"
    source = (root / "docs" / "results" / "paper" / "SOURCE.md").read_text()
    assert "--prefix paper" in source and "07 793 s" in source
    assert sync_results.check(str(root)) == []
