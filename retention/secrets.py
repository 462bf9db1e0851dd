"""Secrets that refuse to be printed."""

from __future__ import annotations


class Secret:
    """A string that shows as ``***`` in repr, str, f-strings and logs.

    Only ``reveal()`` gives the value, so leaking one takes a visible act.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)
