"""Small readers of text values shared by configuration, links and views.

One definition each, so that `?inline=yes`, `GATEWAY_ACCESS_LOG=yes` and a
link's `exp` are read by the same rule everywhere.
"""

from __future__ import annotations

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def flag_word(text: str) -> bool | None:
    """True or False for the usual spellings (any case, blanks around), None for anything else."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    return None


def whole_number(text: str, max_digits: int) -> int | None:
    """The number ASCII `text` spells with at most `max_digits` digits, else None.

    str.isdigit() alone admits "²" and every script's digits, and int() of a
    5,000-digit string is refused (or slow): both are checked first.
    """
    if not (0 < len(text) <= max_digits and text.isascii() and text.isdigit()):
        return None
    return int(text)
