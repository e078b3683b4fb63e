"""The front door and the reference pages say what the code does: every generated table is
current (scripts/gen_docs.py), every local link resolves, and the README keeps its two set-up
commands, its picture and the sections others fill in."""
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generated_tables_are_current():
    assert _gen_docs().stale() == [], "run: python scripts/gen_docs.py"


def test_the_command_table_is_the_argparse_tree():
    """Walked from the parser itself: every leaf subcommand appears once, the help the parser has."""
    import argparse

    from mirage_ros.cli import build_parser, command_table

    leaves = []

    def walk(p, prefix):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, child in a.choices.items():
                    if any(isinstance(x, argparse._SubParsersAction) for x in child._actions):
                        walk(child, prefix + [name])
                    else:
                        leaves.append(" ".join(["mirage", *prefix, name]))

    walk(build_parser(), [])
    table = command_table()
    rows = re.findall(r"^\| `(mirage [^`]+)` \|", table, re.M)
    assert rows == leaves and len(leaves) > 20
    for name in ("mirage bench multi", "mirage bench network", "mirage bench candidates", "mirage replay"):
        assert name in rows
    assert table in (ROOT / "docs" / "cli.md").read_text()


def test_local_links_resolve():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)}: {target} does not exist"


def test_readme_front_door():
    readme = (ROOT / "README.md").read_text()
    # the two set-up commands, as CI and newcomers run them, in this order
    first = "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && mirage demo"
    second = "bash scripts/test.sh"
    assert f"```bash\n{first}\n```" in readme and f"```bash\n{second}\n```" in readme
    assert readme.index(first) < readme.index(second)
    assert "(docs/demo_strip.png)" in readme and (ROOT / "docs" / "demo_strip.png").stat().st_size > 10_000
    for section in ("## Set up", "## Use it with your robot", "## Planning with imagined views",
                    "## What it imagines (measured)"):
        assert section in readme
    assert len(readme.encode()) < 12_000, "the README is the front door: details go to docs/"
