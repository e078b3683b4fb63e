#!/usr/bin/env python3
"""Write the generated tables of the documentation, each between ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->`` in its file, from the code that declares what they list:

- README.md ``topics``: the node's topics with its default parameters, its services and actions
  (``mirage_ros.ros.interfaces.markdown_table(defaults())``);
- docs/node.md ``interfaces``: every topic, service and action (``interfaces.markdown_table()``);
- docs/node.md ``parameters``: every parameter (``mirage_ros.ros.params.markdown_table()``);
- docs/cli.md ``commands``: every ``mirage`` subcommand, walked from the argparse tree
  (``mirage_ros.cli.command_table()``).

``python scripts/gen_docs.py`` rewrites them; ``--check`` only says which are stale (exit 1).
tests/test_docs.py runs the check.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]


def _topics_default() -> str:
    from mirage_ros.ros.interfaces import markdown_table
    from mirage_ros.ros.params import defaults

    return markdown_table(defaults())


def _interfaces() -> str:
    from mirage_ros.ros.interfaces import markdown_table

    return markdown_table()


def _parameters() -> str:
    from mirage_ros.ros.params import markdown_table

    return markdown_table()


def _commands() -> str:
    from mirage_ros.cli import command_table

    return command_table()


BLOCKS: Dict[Tuple[str, str], Callable[[], str]] = {
    ("README.md", "topics"): _topics_default,
    ("docs/node.md", "interfaces"): _interfaces,
    ("docs/node.md", "parameters"): _parameters,
    ("docs/cli.md", "commands"): _commands,
}


def render(text: str, name: str, table: str) -> str:
    """``text`` with the block ``name`` replaced by ``table`` (ValueError when the markers are missing)."""
    pattern = re.compile(rf"(<!-- {name}:begin -->\n)(?:.*?\n)?(<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"no <!-- {name}:begin --> ... <!-- {name}:end --> block")
    return pattern.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text, count=1)


def stale() -> List[str]:
    """The blocks whose text differs from what the code declares, as ``file: name``."""
    out = []
    for (file, name), make in BLOCKS.items():
        text = (ROOT / file).read_text()
        if render(text, name, make()) != text:
            out.append(f"{file}: {name}")
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--check" in argv:
        bad = stale()
        for b in bad:
            print(f"stale: {b} (run python scripts/gen_docs.py)")
        return 1 if bad else 0
    for (file, name), make in BLOCKS.items():
        path = ROOT / file
        text = path.read_text()
        new = render(text, name, make())
        if new != text:
            path.write_text(new)
            print(f"wrote {file}: {name}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
