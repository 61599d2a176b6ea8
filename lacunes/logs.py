"""Log lines that stay lines: a file or subject name holding a newline or another control character
cannot forge a log line of its own (it is written escaped, ``\\n``); tracebacks keep their lines; and a
line logged while a progress bar runs is written above the bar, not glued to it."""

from __future__ import annotations

import logging

#: Control characters (C0 and DEL) and the Unicode line separators, escaped in a log message.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t",
                                                              0x2028: "\\u2028", 0x2029: "\\u2029", 0x85: "\\x85"}


class OneLineFormatter(logging.Formatter):
    """A formatter whose message part is one line (:data:`_ESCAPES`); exception text is kept as it is."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = record.message.translate(_ESCAPES)
        return super().formatMessage(record)


class ProgressAwareHandler(logging.StreamHandler):
    """A stream handler that writes through ``tqdm.write``: a progress bar on the same stream is cleared,
    the line written, the bar drawn again below it (without it, a terminal shows ``…subject/s]E`` and
    ``RROR lacunes.runner`` on the next line)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)


def setup(level: int, fmt: str, project_level: int) -> None:
    """The root handler (``level``, ``fmt``, one line per message) and the project's own level; where the
    root logger has handlers already (a host program's, pytest's), they are left as they are."""
    root = logging.getLogger()
    if not root.handlers:
        handler = ProgressAwareHandler()
        handler.setFormatter(OneLineFormatter(fmt))
        root.addHandler(handler)
        root.setLevel(level)
    logging.getLogger("lacunes").setLevel(project_level)
