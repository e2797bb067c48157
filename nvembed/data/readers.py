"""Line-level readers: a bad row stops with file, line and reason, or is skipped and counted (config choice)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """A bad input row; ``str()`` reads ``file:line: reason``."""

    def __init__(self, path: str | Path, line: int | None, reason: str) -> None:
        self.path, self.line, self.reason = str(path), line, reason
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):
        # Exceptions unpickle as ``cls(*self.args)``, and ``args`` holds only the formatted message: without this,
        # a DataError raised in a Ray task or worker could not be rebuilt on the driver (docs/bugs.md 2026-12-01).
        return type(self), (self.path, self.line, self.reason), self.__dict__


@dataclass
class ErrorPolicy:
    """``on_error="raise"`` stops at the first bad row; ``"skip"`` counts skips per reason (``report()``)."""

    on_error: str = "raise"
    skipped: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")

    def handle(self, err: DataError) -> None:
        if self.on_error == "raise":
            raise err
        self.skipped[err.reason.split(":")[0]] += 1

    def report(self) -> str:
        if not self.skipped:
            return "no rows skipped"
        return "skipped rows: " + ", ".join(f"{reason} x{n}" for reason, n in self.skipped.most_common())


def read_rows(path: str | Path, policy: ErrorPolicy | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, row)`` from JSONL (1-based lines) or Parquet (1-based row numbers)."""
    policy = policy or ErrorPolicy()
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, "file not found")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield i, row
        return
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                policy.handle(DataError(path, i, f"invalid JSON: {err.msg} at column {err.colno}"))
                continue
            if not isinstance(row, dict):
                policy.handle(DataError(path, i, f"invalid JSON: expected an object, got {type(row).__name__}"))
                continue
            yield i, row


def require_text(row: dict[str, Any], key: str, path: str | Path, line: int) -> str:
    """``row[key]`` as a non-empty string, or :class:`DataError` (missing field / empty text)."""
    if key not in row or row[key] is None:
        raise DataError(path, line, f"missing field: {key!r}")
    value = row[key]
    if not isinstance(value, str):
        raise DataError(path, line, f"missing field: {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(path, line, f"empty text: field {key!r}")
    return value


def require_text_list(
    row: dict[str, Any], key: str, path: str | Path, line: int, allow_empty: bool = True
) -> list[str]:
    if key not in row or row[key] is None:
        raise DataError(path, line, f"missing field: {key!r}")
    value = row[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(path, line, f"missing field: {key!r} must be a list of strings")
    for j, v in enumerate(value):
        if not v.strip():
            raise DataError(path, line, f"empty text: {key}[{j}]")
    if not value and not allow_empty:
        raise DataError(path, line, f"empty text: {key!r} is an empty list")
    return value


def parse_rows(
    path: str | Path, parse: Callable[[dict[str, Any], int], Any], policy: ErrorPolicy | None = None
) -> Iterator[Any]:
    """Apply ``parse(row, line)`` to each row; its :class:`DataError` goes through ``policy``."""
    policy = policy or ErrorPolicy()
    for line, row in read_rows(path, policy):
        try:
            yield parse(row, line)
        except DataError as err:
            policy.handle(err)
