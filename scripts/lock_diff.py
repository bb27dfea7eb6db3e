"""Say what `make lock` changed: packages added, removed, and moved to another version.

Usage: python scripts/lock_diff.py OLD_LOCK NEW_LOCK
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)")


def pins(path: Path) -> dict[str, str]:
    """name -> version for every `name==version` line of a pip-compile lock (comments skipped)."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        m = PIN.match(line.strip())
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def diff(old: dict[str, str], new: dict[str, str]) -> list[str]:
    lines = [f"  + {n}=={new[n]}" for n in sorted(new.keys() - old.keys())]
    lines += [f"  - {n}=={old[n]}" for n in sorted(old.keys() - new.keys())]
    lines += [f"  ~ {n} {old[n]} -> {new[n]}" for n in sorted(old.keys() & new.keys()) if old[n] != new[n]]
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    old, new = pins(Path(argv[0])), pins(Path(argv[1]))
    lines = diff(old, new)
    print(f"{argv[1]}: {len(new)} pinned packages; " + (f"{len(lines)} change(s):" if lines else "no changes"))
    print("\n".join(lines)) if lines else None
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
