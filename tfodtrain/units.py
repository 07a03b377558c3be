"""Byte units, defined once for every module of tfodtrain."""

MIB = 1 << 20
GIB = 1 << 30


def gib(n: float) -> str:
    """`n` bytes as "1.25 GiB" (for one-line messages)."""
    return f"{n / GIB:.2f} GiB"
