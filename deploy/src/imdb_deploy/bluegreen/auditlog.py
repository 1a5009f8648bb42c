"""The audit log's chain: each entry carries the sha256 of the line before it ("prev"), written
on the host under the log's lock (commands.chained_append), so an edited, inserted or removed
line shows where it was. Entries from before the chain began carry none; after the first that
does, every entry must.

The chain shows tampering on one host; it cannot stop a writer who rewrites every line after
the one it changed. Each entry is written to every host of the environment, so `fab audit
--verify` also tells whether the hosts' chains end in the same entry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ChainBreak:
    line: int  # 1-based
    reason: str


def line_hash(line: str | None) -> str:
    """The "prev" the entry after `line` carries: sha256 of the line and its newline (of
    nothing, for the first entry of a log)."""
    data = b"" if line is None else (line + "\n").encode()
    return hashlib.sha256(data).hexdigest()


def chain_break(lines: Sequence[str]) -> ChainBreak | None:
    """The first entry that does not chain to the one before it, or None."""
    previous: str | None = None
    chained = False
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except ValueError:
            return ChainBreak(number, "not a JSON line")
        prev = entry.get("prev") if isinstance(entry, dict) else None
        if prev is None:
            if chained:
                return ChainBreak(number, "no hash of the line before it (the chain had begun)")
        elif prev != line_hash(previous):
            return ChainBreak(
                number,
                f"its prev {str(prev)[:12]} is not the hash of the line before it "
                f"({line_hash(previous)[:12]}): that line was changed, added or removed",
            )
        else:
            chained = True
        previous = line
    return None
