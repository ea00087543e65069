"""The committed reports survive their own commands: rerunning a benchmark never erases a hand-written section.

``python -m benchmarks.kd`` and ``python -m benchmarks.vfl`` write their report file whole and append the marked
blocks (``<!-- name:begin --> ... <!-- name:end -->``) of the old file; every other benchmark replaces its own block
(:func:`benchmarks.common.write_section`). So text outside a block is lost on the first kind of rerun, and text
inside a command's block on the second.
"""

from __future__ import annotations

import re

import pytest

from benchmarks.common import REPO_ROOT, kept_sections

#: Blocks a command replaces whole, and the headings it writes there (benchmarks/*/report.py, vfl/speed.py,
#: vfl/transport.py). A heading beyond these is someone's hand-written text, which the next run would erase.
WRITTEN_BLOCKS = {
    "knowledge-benchmark": (
        "## Knowledge benchmark",
        "### alpha",
        "### pathological",
        "### Ablation",
        "### Expectations",
        "### Not finished",
    ),
    "robustness-benchmark": ("## Robustness to malicious clients", "### Expectations", "### Not finished"),
    "scale-benchmark": ("## Scale: ",),
    "vfl-speed": ("## Speed: ",),
    "vfl-transport": ("### The transport's floor",),
}


def _blocks(text: str) -> dict[str, str]:
    blocks: dict[str, str] = {}
    for block in kept_sections(text):
        name = re.match(r"<!-- ([\w-]+):begin -->", block)
        assert name is not None
        assert name.group(1) not in blocks, f"two blocks named {name.group(1)}"
        blocks[name.group(1)] = block
    return blocks


def _foreign_headings(name: str, block: str) -> list[str]:
    """Headings of ``block`` that its command does not write."""
    return [line for line in block.splitlines() if line.startswith("#") and not line.startswith(WRITTEN_BLOCKS[name])]


@pytest.mark.parametrize("report", ["BENCHMARKS_KD.md", "BENCHMARKS.md"])
def test_nothing_after_the_generated_part_lies_outside_a_block(report: str) -> None:
    text = (REPO_ROOT / report).read_text()
    blocks = kept_sections(text)
    assert blocks, f"{report} has no marked block"
    # What a whole-file rerun writes back: its own part, then the old blocks one blank line apart.
    assert text[text.index(blocks[0]) :] == "\n\n".join(blocks) + "\n"


@pytest.mark.parametrize("report", ["BENCHMARKS_KD.md", "BENCHMARKS.md"])
def test_a_block_a_command_writes_holds_only_its_headings(report: str) -> None:
    for name, block in _blocks((REPO_ROOT / report).read_text()).items():
        if name not in WRITTEN_BLOCKS:
            continue
        foreign = _foreign_headings(name, block)
        assert foreign == [], f"{report}: block {name} holds hand-written sections its command would erase: {foreign}"


def test_the_check_sees_hand_written_text_in_a_written_block() -> None:
    text = "<!-- scale-benchmark:begin -->\n## Scale: 3 clients\n### Notes (by hand)\n<!-- scale-benchmark:end -->\n"
    assert _foreign_headings("scale-benchmark", _blocks(text)["scale-benchmark"]) == ["### Notes (by hand)"]
