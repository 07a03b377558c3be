"""Memory trace CSV files: one reading a row, ``step,time_s,used_bytes,limit_bytes``.

The training callback writes one file per memory pool (``memory_trace_<pool>.csv``); the replay
tool, the benchmark and the trace generator read and write the same format::

    step,time_s,used_bytes,limit_bytes
    25,26.07,15607005184,85899345920

``time_s`` has two decimals, the byte counts are integers. Standard library only.

Example::

    with TraceWriter("memory_trace_gpu0.csv") as writer:
        writer.write(TraceRow(step=25, time_s=26.07, used_bytes=15 << 30, limit_bytes=80 << 30))
    rows = list(read_trace("memory_trace_gpu0.csv"))
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Iterator

HEADER = ("step", "time_s", "used_bytes", "limit_bytes")
HEADER_LINE = ",".join(HEADER)


class TraceFormatError(ValueError):
    """A trace file that does not follow the format; the message names the file and row."""


@dataclass(frozen=True)
class TraceRow:
    """One reading of one memory pool."""

    step: int
    time_s: float
    used_bytes: int
    limit_bytes: int

    def to_line(self) -> str:
        return f"{int(self.step)},{float(self.time_s):.2f},{int(self.used_bytes)},{int(self.limit_bytes)}"


class TraceWriter:
    """Append readings to a trace CSV, writing the header only when the file is new or empty.

    Opening an existing trace appends to it (a resumed run goes on in the same file); a row the
    previous run left unfinished when it was killed is cut off first. Every row is flushed, so a
    run killed by the out-of-memory killer still leaves its history up to the end.

    Example::

        writer = TraceWriter("runs/x/memory_trace_gpu0.csv")
        writer.append(step=100, time_s=61.5, used_bytes=12 << 30, limit_bytes=80 << 30)
        writer.close()
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        if os.path.exists(self.path):
            _drop_torn_row(self.path)
        is_new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        self._file = open(self.path, "a", encoding="utf-8", newline="")
        if is_new:
            self._file.write(HEADER_LINE + "\n")
        self._file.flush()

    def append(self, step: int, time_s: float, used_bytes: int, limit_bytes: int) -> None:
        self.write(TraceRow(int(step), float(time_s), int(used_bytes), int(limit_bytes)))

    def write(self, row: TraceRow) -> None:
        self._file.write(row.to_line() + "\n")
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _drop_torn_row(path: str) -> None:
    """A run killed in the middle of a row leaves it unfinished: cut it off, so the file stays
    readable and the resumed run's rows start on a line of their own."""
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def read_trace(path: str | os.PathLike) -> Iterator[TraceRow]:
    """Yield the rows of a trace CSV in order.

    Raises ``TraceFormatError`` (one line: file, row number, what is wrong) on a missing or wrong
    header, a row with the wrong number of fields or a value that is not a number. A missing file
    raises ``FileNotFoundError`` as usual. Blank lines are skipped.
    """
    name = os.fspath(path)
    with open(name, encoding="utf-8") as f:
        header = f.readline().strip()
        if header != HEADER_LINE:
            shown = header[:80] if header else "an empty first line"
            raise TraceFormatError(f"{name}: row 1: expected header '{HEADER_LINE}', found '{shown}'")
        for number, line in enumerate(f, start=2):
            line = line.strip()
            if line:
                yield _parse_row(name, number, line)


def _parse_row(name: str, number: int, line: str) -> TraceRow:
    fields = line.split(",")
    if len(fields) != len(HEADER):
        raise TraceFormatError(
            f"{name}: row {number}: expected {len(HEADER)} values ({HEADER_LINE}), found {len(fields)}: '{line[:80]}'")
    try:
        step = int(fields[0])
    except ValueError:
        raise TraceFormatError(f"{name}: row {number}: step must be an integer, found '{fields[0]}'") from None
    try:
        time_s = float(fields[1])
    except ValueError:
        raise TraceFormatError(f"{name}: row {number}: time_s must be a number, found '{fields[1]}'") from None
    values = []
    for column, text in zip(HEADER[2:], fields[2:]):
        try:
            values.append(int(text))
        except ValueError:
            try:  # tolerate "1.2e10" from other writers, but only if it is a whole number
                number_value = float(text)
                if number_value != number_value or number_value in (float("inf"), float("-inf")):
                    raise ValueError
                values.append(int(number_value))
            except ValueError:
                raise TraceFormatError(
                    f"{name}: row {number}: {column} must be an integer byte count, found '{text}'") from None
    if time_s != time_s or time_s in (float("inf"), float("-inf")):
        raise TraceFormatError(f"{name}: row {number}: time_s must be a finite number, found '{fields[1]}'")
    return TraceRow(step, time_s, values[0], values[1])


def write_trace(path: str | os.PathLike, rows: Iterable[TraceRow]) -> None:
    """Write a whole trace at once (overwrites), e.g. for generated traces."""
    with open(os.fspath(path), "w", encoding="utf-8", newline="") as f:
        f.write(HEADER_LINE + "\n")
        for row in rows:
            f.write(row.to_line() + "\n")
