"""Checking a dataset against the `SHA256SUMS.txt` it is published with."""

from __future__ import annotations

import hashlib
from pathlib import Path

# Text files that copies often carry with other line ends than the published ones (the official CirCor files have
# CRLF; git copies have LF): their sums are also checked with CRLF line ends before they count as changed.
_TEXT_SUFFIXES = (".txt", ".hea", ".csv", ".tsv", "RECORDS")


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_listing(listing: Path) -> list[tuple[str, str]]:
    entries = []
    for number, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise ValueError(f"{listing} line {number}: expected '<sha256> <path>', got {line!r}.")
        entries.append((parts[0].lower(), parts[1].strip().lstrip("*")))
    return entries


def verify_sha256sums(root: Path, listing_name: str = "SHA256SUMS.txt") -> dict[str, int]:
    """
    Check every file `root/listing_name` lists; raise one `ValueError` naming every missing or changed file.

    A text file whose bytes differ only by LF instead of CRLF line ends is accepted (and counted): its content is
    the published one.

    Args:
        root (`Path`): the dataset folder holding the listing.
        listing_name (`str`, *optional*, defaults to `"SHA256SUMS.txt"`): the listing's file name.

    Returns:
        `dict[str, int]`: counts of `"checked"` files, of those accepted `"with_lf_line_ends"`, and `"listed"`; all
        0 when there is no listing.
    """
    listing = root / listing_name
    counts = {"listed": 0, "checked": 0, "with_lf_line_ends": 0}
    if not listing.is_file():
        return counts
    missing, changed = [], []
    for expected, relative in _read_listing(listing):
        counts["listed"] += 1
        path = root / relative
        if not path.is_file():
            missing.append(relative)
            continue
        data = path.read_bytes()
        if sha256_of(data) == expected:
            counts["checked"] += 1
        elif relative.endswith(_TEXT_SUFFIXES) and b"\r\n" not in data and \
                sha256_of(data.replace(b"\n", b"\r\n")) == expected:
            counts["checked"] += 1
            counts["with_lf_line_ends"] += 1
        else:
            changed.append(relative)
    problems = []
    if missing:
        problems.append(f"{len(missing)} listed file(s) missing: {missing}")
    if changed:
        problems.append(f"{len(changed)} file(s) whose sha256 differs from {listing_name}: {changed}")
    if problems:
        raise ValueError(f"{root}: " + "; ".join(problems) + ".")
    return counts
