"""The docs say what the code does: generated tables match, README's commands are CI's."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mapping_docs_are_generated_from_the_tables():
    spec = importlib.util.spec_from_file_location(
        "write_mapping_docs", ROOT / "scripts" / "write_mapping_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs" / "mapping.md").read_text() == module.mapping_docs(), (
        "run: python scripts/write_mapping_docs.py")
    formats = (ROOT / "docs" / "formats.md").read_text()
    assert module.BEGIN in formats and formats == module.formats_docs(formats), (
        "run: python scripts/write_mapping_docs.py")


def test_ci_runs_the_test_command_the_readme_gives():
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()
    quickstart = readme.split("## Quickstart")[1].split("```bash\n")[1].split("```")[0]
    test_command = quickstart.strip().splitlines()[1]
    assert "python -m pytest -q" in test_command
    assert all(part.strip() in ci.splitlines() for part in test_command.split("&&"))


def test_the_quickstart_installs_what_ci_installs():
    """A newcomer runs the tests CI runs: every package CI installs for them, the quickstart
    installs too (llama.cpp aside: a 6-minute build whose one test skips, saying so)."""
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()
    quickstart = readme.split("## Quickstart")[1].split("```bash\n")[1].split("```")[0]
    installs = [part.strip() for part in quickstart.splitlines()[0].split("&&")
                if part.strip().startswith("pip install")]
    for line in ci.splitlines():
        if line.startswith("pip install") and "[llama]" not in line:
            assert line.replace("--quiet ", "") in installs, line
