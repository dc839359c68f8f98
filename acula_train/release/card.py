"""The release's model card: `model_cards/<name>.md` (or `model_cards/TEMPLATE.md` until that card is written), with
the facts the export knows filled into its `{{placeholders}}`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from .manifest import ReleaseError

# The top-level model_cards/ folder of a source checkout (each released model has one card there).
MODEL_CARDS_DIR = Path(__file__).resolve().parents[2] / "model_cards"
TEMPLATE_NAME = "TEMPLATE.md"
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
# Notes to the card's authors (`<!-- ... -->`, with the blank line after them) stay out of the published card.
AUTHOR_NOTE = re.compile(r"<!--.*?-->\n*", re.DOTALL)


def default_card_path(name: str) -> Path:
    """`model_cards/<name>.md` where it exists, else the template."""
    own = MODEL_CARDS_DIR / f"{name}.md"
    return own if own.is_file() else MODEL_CARDS_DIR / TEMPLATE_NAME


def render_card(path: str | Path, facts: Mapping[str, object]) -> str:
    """The card at `path` with each `{{name}}` replaced by `facts[name]` and its notes to authors removed.

    Raises:
        [`ReleaseError`]: the card is missing, or names a placeholder the export does not know (a typo must not
            reach the published card).
    """
    path = Path(path)
    if not path.is_file():
        raise ReleaseError(f"model card {path} does not exist (each release has its card in model_cards/; pass "
                           "--model_card)")
    text = AUTHOR_NOTE.sub("", path.read_text(encoding="utf-8"))
    unknown = sorted({match.group(1) for match in PLACEHOLDER.finditer(text)} - set(facts))
    if unknown:
        raise ReleaseError(f"model card {path} names unknown placeholders {unknown}; known: {sorted(facts)}")
    return PLACEHOLDER.sub(lambda match: str(facts[match.group(1)]), text)


__all__ = ["MODEL_CARDS_DIR", "TEMPLATE_NAME", "default_card_path", "render_card"]
