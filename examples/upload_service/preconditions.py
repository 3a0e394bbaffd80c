"""ETags and the conditional request headers (RFC 9110 section 13) the service honours.

The ETag of a stored file is its ``FileVersion.fingerprint``: a digest of
the file's size and its chunk addresses, which the store reads from the
manifest anyway when it opens the file.  Chunk addresses are SHA-256 of the
bytes, so different bytes always give a different ETag (a *strong* one, fit
for ranges), and an upload of the same bytes gives the same ETag again, so
caches stay valid across re-uploads.  It costs no pass over the data and no
storage of its own (an ETag stored beside the store would need a commit of
its own, and could disagree with the store after a crash).
"""

from __future__ import annotations


def etag_of(fingerprint: str) -> str:
    return f'"{fingerprint}"'


def _tags(header: str) -> list[str]:
    return [t.strip() for t in header.split(",") if t.strip()]


def matches(header: str, etag: str | None, weak: bool) -> bool:
    """Whether an If-Match (strong) or If-None-Match (``weak``) list names ``etag`` (None: no file)."""
    tags = _tags(header)
    if "*" in tags:
        return etag is not None
    if etag is None:
        return False
    if weak:
        return etag in (t[2:] if t.startswith("W/") else t for t in tags)
    return etag in tags  # a weak tag never matches strongly


def failed_precondition(headers, etag: str | None) -> bool:
    """If-Match / If-None-Match for a request that changes the file (PUT, DELETE): True means 412."""
    if_match, if_none_match = headers.get("if-match"), headers.get("if-none-match")
    if if_match is not None and not matches(if_match, etag, weak=False):
        return True
    return if_none_match is not None and matches(if_none_match, etag, weak=True)


def read_status(headers, etag: str) -> int | None:
    """For GET/HEAD: 412 (If-Match fails), 304 (If-None-Match matches), or None to answer as usual."""
    if_match, if_none_match = headers.get("if-match"), headers.get("if-none-match")
    if if_match is not None and not matches(if_match, etag, weak=False):
        return 412
    if if_none_match is not None and matches(if_none_match, etag, weak=True):
        return 304
    return None


def range_applies(headers, etag: str) -> bool:
    """If-Range: the Range header counts only if the client's validator is still the file's ETag."""
    if_range = headers.get("if-range")
    return if_range is None or if_range.strip() == etag
