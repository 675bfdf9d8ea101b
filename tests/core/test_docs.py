"""The README is the front door and docs/ the manual: both stay true to the repository.

- The README stays short (at most 300 lines) and starts with the two commands that work on a
  fresh machine: installing and starting the daemon on config.example.toml (a local target,
  no account), and the exact test command CI runs (.ci/run).
- Every relative link in README.md and docs/ resolves to a file, and every #anchor to a
  heading of that file; the README links every page of docs/.
- The README's commands table lists every verb of the command line, and
  docs/configuration.md names every configuration key, the keys of each registered platform
  in that platform's section.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from syncd.cli import build_parser
from syncd.config import DaemonSettings, FolderSettings, HttpSettings, MetricsSettings, load_config
from syncd.targets import REGISTRY, target_class
from syncd.targets.base import TargetSettings
from tests.daemon_harness import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
MAX_README_LINES = 300

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```")


def prose(path: Path) -> list[str]:
    """The lines of a Markdown file outside fenced code blocks."""
    lines, in_code = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.strip()):
            in_code = not in_code
            continue
        if not in_code:
            lines.append(line)
    return lines


def code_blocks(path: Path) -> list[tuple[int, str]]:
    """``(line number of the opening fence, body)`` of every fenced block, in order."""
    blocks, body, start = [], None, 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line.strip()):
            if body is None:
                body, start = [], number
            else:
                blocks.append((start, "\n".join(body).strip()))
                body = None
        elif body is not None:
            body.append(line)
    return blocks


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in prose(path) if re.match(r"#{1,6} ", line)}


def links(path: Path) -> list[str]:
    return [target for line in prose(path) for target in LINK.findall(line)]


def local_links(path: Path) -> list[str]:
    return [t for t in links(path) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


# -- the README -----------------------------------------------------------------------------
def test_readme_is_at_most_300_lines():
    count = len(README.read_text(encoding="utf-8").splitlines())
    assert count <= MAX_README_LINES, f"README.md has {count} lines; move detail into docs/"


def ci_test_command() -> str:
    """The commands .ci/run runs (after its `set` and `cd` lines), joined with &&."""
    commands = [
        line.strip() for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "set ", "cd "))
    ]
    return " && ".join(commands)


def test_readme_starts_with_the_two_commands():
    text = README.read_text(encoding="utf-8").splitlines()
    assert text[0] == "# syncd"
    first_section = next(n for n, line in enumerate(text, 1) if line.startswith("## "))
    blocks = code_blocks(README)
    assert len(blocks) >= 2 and blocks[1][0] < first_section, "the two commands come before any section"
    install_and_run, install_and_test = blocks[0][1], blocks[1][1]
    assert install_and_run == (
        "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/syncd run --config config.example.toml"
    )
    assert install_and_test == "bash tests/install.sh && .venv/bin/python -m pytest -q && bash tests/pytest310.sh -q"
    assert install_and_test == ci_test_command(), "the README's test command is the one CI runs"


def test_the_first_command_runs_on_the_shipped_config_with_the_local_target_only():
    config = load_config(REPO / "config.example.toml")
    used = config.folder_targets()
    assert used, "config.example.toml feeds no target"
    assert {config.target_settings[name].platform for name in used} == {"local"}, (
        "the first command must work without an account: config.example.toml uses the local target only"
    )


def test_readme_links_every_page_of_docs():
    linked = {(README.parent / t.split("#")[0]).resolve() for t in local_links(README) if t.split("#")[0]}
    pages = {page.resolve() for page in DOCS.rglob("*.md")}
    missing = sorted(str(p.relative_to(REPO)) for p in pages - linked)
    assert not missing, f"README.md does not link {missing}"


def test_readme_commands_table_lists_every_command():
    parser = build_parser()
    verbs = next(a for a in parser._actions if a.dest == "command").choices
    table = [line for line in prose(README) if line.startswith("| `syncd ")]
    for verb in verbs:
        assert any(line.startswith(f"| `syncd {verb}") for line in table), f"README commands table lacks {verb}"


# -- links ----------------------------------------------------------------------------------
@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    broken = []
    for target in local_links(page):
        file_part, _, anchor = target.partition("#")
        destination = (page.parent / file_part).resolve() if file_part else page
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target}: no heading #{anchor} in {destination.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: broken links: {broken}"


# -- configuration --------------------------------------------------------------------------
def configuration_sections() -> dict[str, str]:
    """docs/configuration.md split at its headings: heading text -> the section's prose."""
    sections: dict[str, list[str]] = {}
    current = ""
    for line in prose(DOCS / "configuration.md"):
        if re.match(r"#{2,3} ", line):
            current = line.lstrip("#").strip().strip("`")
        sections.setdefault(current, []).append(line)
    return {name: "\n".join(lines) for name, lines in sections.items()}


def documented(section: str, key: str) -> bool:
    return f"| `{key}` |" in section


@pytest.mark.parametrize(("table", "model"), [
    ("[daemon]", DaemonSettings), ("[http]", HttpSettings), ("[metrics]", MetricsSettings),
    ("[[folders]]", FolderSettings),
    ("[targets.NAME]", TargetSettings),
])
def test_configuration_doc_names_every_key(table, model):
    section = configuration_sections()[table]
    missing = [key for key in model.model_fields if not documented(section, key)]
    assert not missing, f"docs/configuration.md {table} does not describe {missing}"


@pytest.mark.parametrize("platform", sorted(REGISTRY))
def test_configuration_doc_names_every_key_of_each_platform(platform):
    sections = configuration_sections()
    assert platform in sections, f"docs/configuration.md has no section '### {platform}'"
    common = TargetSettings.model_fields
    # The platform's own keys, and common ones whose default it changes (Nucleus' timeout).
    own = [key for key, field in target_class(platform).Settings.model_fields.items()
           if key != "platform" and (key not in common or field.default != common[key].default)]
    missing = [key for key in own if not documented(sections[platform], key)]
    assert not missing, f"docs/configuration.md '### {platform}' does not describe {missing}"
