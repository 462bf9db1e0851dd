"""Reading the files people write (config, policies, allowlist) as SPEC says: UTF-8, with or
without a byte order mark, any line ends; anything else is an error at the line and column
of the first byte that is not UTF-8 (issue 25: one Latin-1 byte in a comment was a
traceback, and killed the daemon's reloads)."""

from __future__ import annotations

import codecs
from pathlib import Path

from retention.errors import ConfigError, Problem


def read_text(path: Path) -> str:
    """The file's text with line ends as ``\\n``. Raises OSError when it cannot be read (the
    caller says what the file was for) and ConfigError when it is not UTF-8."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError([_not_utf8(str(path), data, exc.start)]) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # as open() in text mode reads


def _not_utf8(shown: str, data: bytes, position: int) -> Problem:
    """The problem of ``data`` at ``position``, located as YAML locates (line, character)."""
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    before = data[start:position].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    line_start = before.rfind(b"\n") + 1
    column = len(before[line_start:].decode("utf-8")) + 1  # valid: the decoder stopped here
    return Problem(shown, before.count(b"\n") + 1, column,
                   f"not UTF-8 text: byte 0x{data[position]:02x}; config, policy and allowlist "
                   "files must be UTF-8 (convert it, e.g. iconv -f latin1 -t utf-8)")
