"""Reading a unit file back as settings, for assertions about what a unit says."""

from __future__ import annotations


def settings(text: str) -> dict[str, dict[str, list[str]]]:
    """Section → key → values in order (keys such as Environment= may repeat)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        out[section].setdefault(key, []).append(value)
    return out
