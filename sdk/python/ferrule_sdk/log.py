"""Logging from a plugin into the runtime's structured log.

The runtime tags each line with the plugin instance and rate-limits it.
``ferrule_sdk.log.info("connected to %s", addr)``; inside a component the
standard ``logging`` module is routed here too. Outside one (a plugin's
own tests) lines go to the ``logging`` module under ``ferrule.plugin``.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

TRACE, DEBUG, INFO, WARN, ERROR = range(5)

_sink: Optional[Callable[[int, str], None]] = None
_fallback = logging.getLogger("ferrule.plugin")


def install(sink: Callable[[int, str], None]) -> None:
    """Called by the component glue: lines go to the runtime from now on."""
    global _sink
    _sink = sink


def write(level: int, message: str, *args: object) -> None:
    """Writes one line at ``level`` (``TRACE`` .. ``ERROR``), ``%``-formatted with ``args``."""
    text = message % args if args else message
    if _sink is not None:
        _sink(level, text)
    else:
        _fallback.log((5, 10, 20, 30, 40)[level], text)


def trace(message: str, *args: object) -> None:
    write(TRACE, message, *args)


def debug(message: str, *args: object) -> None:
    write(DEBUG, message, *args)


def info(message: str, *args: object) -> None:
    write(INFO, message, *args)


def warn(message: str, *args: object) -> None:
    write(WARN, message, *args)


def error(message: str, *args: object) -> None:
    write(ERROR, message, *args)


class HostHandler(logging.Handler):
    """Routes the ``logging`` module's records to the runtime's log."""

    def emit(self, record: logging.LogRecord) -> None:
        level = (TRACE if record.levelno < logging.DEBUG else DEBUG if record.levelno < logging.INFO
                 else INFO if record.levelno < logging.WARNING else WARN if record.levelno < logging.ERROR
                 else ERROR)
        try:
            text = self.format(record)
        except Exception:  # a bad format string must not fail the plugin call
            text = str(record.msg)
        if _sink is not None:
            _sink(level, text)
