"""The one exception type the converter raises for every user-facing failure."""

from __future__ import annotations


class ConvertError(Exception):
    """A checkpoint could not be converted; the message says why in one line.

    The CLI prints ``error: <message>`` and exits with status 2 without a traceback, so the
    message must name the file / tensor / key involved and what was expected.
    """
