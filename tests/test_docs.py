"""The documentation stays true: a short README that starts with the two newcomer commands, links that resolve,
and an option reference (docs/options.md) generated from the command line's own help.

Regenerate docs/options.md after changing an option: ``python tests/test_docs.py``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
OPTIONS = DOCS / "options.md"
PACKAGE = ROOT / "src" / "lightning_prune"
README_MAX_LINES = 200
HELP_COLUMNS = "120"
COMMANDS = ("fit-free", "evaluate", "export")
# The first fenced block of the README: what a newcomer runs on a fresh machine (quickstart, then the tests).
FIRST_COMMANDS = [
    "pip install torch==2.13.0 && pip install -e . && lightning-prune fit-free --config configs/quickstart.yaml",
    "pip install torch==2.13.0 && pip install -e '.[test]' -e plugins/lightning-prune-fisher && python -m pytest",
]
OPTIONS_HEADER = """# Option reference

Generated from the command line's own help (`COLUMNS=120 lightning-prune <command> --help`); do not edit by hand.
`tests/test_docs.py` fails when it no longer matches the code: regenerate it with `python tests/test_docs.py`.
What the options are for, with examples: [usage.md](usage.md); the Trainer options folded here:
`lightning-prune fit-free --help-all`.
"""


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def command_help(command: str) -> str:
    """``lightning-prune <command> --help`` as a terminal of ``HELP_COLUMNS`` columns shows it (run in-process)."""
    from lightning_prune.cli import main as cli_main
    from lightning_prune.commands.export import main as export_main

    main = export_main if command == "export" else cli_main
    argv = ["--help"] if command == "export" else [command, "--help"]
    out = io.StringIO()
    with _environment(COLUMNS=HELP_COLUMNS), contextlib.redirect_stdout(out):
        try:
            main(argv)
        except SystemExit as exit_:
            assert exit_.code in (0, None), f"{command} --help exited with {exit_.code}"
    return out.getvalue()


def render_options() -> str:
    """The text docs/options.md must hold."""
    parts = [OPTIONS_HEADER]
    for command in COMMANDS:
        parts.append(f"\n## `lightning-prune {command}`\n\n```text\n{command_help(command).rstrip()}\n```\n")
    return "".join(parts)


def _without_fences(text: str) -> str:
    """``text`` without fenced code blocks."""
    return re.sub(r"^```.*?^```[^\n]*$", "", text, flags=re.MULTILINE | re.DOTALL)


def _without_code(text: str) -> str:
    """``text`` without fenced code blocks and inline code spans (links there are examples, not links)."""
    return re.sub(r"`[^`\n]*`", "", _without_fences(text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    heading = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def _anchors(file: Path) -> set[str]:
    anchors, seen = set(), {}
    for line in _without_fences(file.read_text(encoding="utf-8")).splitlines():
        found = re.match(r"#{1,6} (.+)", line)
        if found:
            slug = _slug(found.group(1))
            anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _documents() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def option_names(text: str) -> list[str]:
    """The options a help text lists (``--name`` at the start of an option line)."""
    return sorted(set(re.findall(r"^ {2}(--[\w.\-]+)", text, flags=re.MULTILINE)))


def test_option_reference_matches_the_command_line_help():
    """Every option the commands take is in docs/options.md and nothing else is. Compared by option names, not
    text: CI installs the newest Lightning and jsonargparse, whose help wording and wrapping may change."""
    expected = render_options()
    found = OPTIONS.read_text(encoding="utf-8") if OPTIONS.is_file() else ""
    libraries = ", ".join(f"{name} {version(name)}" for name in ("lightning", "jsonargparse"))
    assert found.startswith(OPTIONS_HEADER) and option_names(found) == option_names(expected), (
        f"{OPTIONS.relative_to(ROOT)} no longer lists the options of `lightning-prune <command> --help` (rendered "
        f"here with {libraries}): regenerate it with `python tests/test_docs.py` and commit the result"
    )


def test_readme_is_short_and_starts_with_the_two_newcomer_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines, at most {README_MAX_LINES}"
    start = next(i for i, line in enumerate(lines) if line.startswith("```"))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
    assert lines[0].startswith("# ") and all(not line.strip() for line in lines[1:start]), "the commands come first"
    assert lines[start] == "```bash" and lines[start + 1 : end] == FIRST_COMMANDS


def test_every_relative_link_points_to_an_existing_file_and_heading():
    broken = []
    for document in _documents():
        text = _without_code(document.read_text(encoding="utf-8"))
        for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (document.parent / path).resolve() if path else document
            if not file.exists():
                broken.append(f"{document.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                broken.append(f"{document.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_docs_page_is_linked_from_another_page():
    linked = set()
    for document in _documents():
        for target in re.findall(r"\]\(([^)#\s]+)", _without_code(document.read_text(encoding="utf-8"))):
            linked.add((document.parent / target).resolve())
    orphans = [page.name for page in sorted(DOCS.glob("*.md")) if page.resolve() not in linked]
    assert not orphans, f"docs pages no page links to: {orphans}"


def test_code_layout_names_every_module():
    """docs/development.md's layout table names every module of the package (``name.py``, ``package/`` and the
    modules inside it), so a new module is documented where it lands."""
    text = (DOCS / "development.md").read_text(encoding="utf-8")
    layout = text[text.index("## Code layout") :]
    missing = []
    for path in sorted(PACKAGE.iterdir()):
        if path.suffix == ".py" and path.stem != "__init__":
            missing += [] if f"`{path.name}`" in layout else [path.name]
        elif path.is_dir() and (path / "__init__.py").is_file():
            missing += [] if f"`{path.name}/`" in layout else [f"{path.name}/"]
            missing += [
                f"{path.name}/{module.name}"
                for module in sorted(path.glob("*.py"))
                if module.stem != "__init__" and f"`{module.stem}`" not in layout
            ]
    assert not missing, f"docs/development.md's code layout lacks: {missing}"


if __name__ == "__main__":
    OPTIONS.parent.mkdir(exist_ok=True)
    OPTIONS.write_text(render_options(), encoding="utf-8")
    print(f"wrote {OPTIONS.relative_to(ROOT)}", file=sys.stderr)
