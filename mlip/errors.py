"""User-facing errors.

Every problem caused by user input (files, labels, configs, checkpoints) is raised as an
:class:`MLIPError` whose message is a single line naming the file, the structure index and the
key at fault. The CLI prints it as ``mlip: error: <message>`` and exits with status 1.
"""

from __future__ import annotations


class MLIPError(Exception):
    """An error the user can fix; ``str(err)`` is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def where(path: object | None = None, index: int | None = None, key: str | None = None) -> str:
    """Format a location prefix such as ``data.xyz, structure 3, key 'forces'``."""
    parts = []
    if path is not None:
        parts.append(str(path))
    if index is not None:
        parts.append(f"structure {index}")
    if key is not None:
        parts.append(f"key '{key}'")
    return ", ".join(parts)


_warned: set[str] = set()


def warn_once(message: str) -> None:
    """Print ``mlip: warning: <message>`` to stderr, once per distinct message and process."""
    import sys

    text = " ".join(str(message).split())
    if text in _warned:
        return
    _warned.add(text)
    print(f"mlip: warning: {text}", file=sys.stderr, flush=True)
