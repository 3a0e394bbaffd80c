"""``chunkfs fsck`` as a whole: open the store, check, repair, check again, and say what it means.

The exit status follows fsck(8)'s numbers, so scripts and boot tools that
know them can use it (2 keeps the CLI's meaning, a usage mistake):

====  ==========================================================================
0     no damage.  Data lost earlier, already marked by a repair, is still listed
1     damage was found and all of it was repaired
2     usage error (unknown flag, missing argument)
4     damage is left: found without ``--repair``, or not repairable
8     could not check: not a store, damaged settings, unreadable index, in use for --repair
====  ==========================================================================

A read-only check of a mounted store runs against an LMDB snapshot while
the daemon keeps writing; anything it finds is checked once more, and only
what both checks find is reported (background gc may move chunks between
the two reads of a check).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .errors import StoreLockedError
from .fsck import check_store
from .mounts import lock_holder, mounts_of_store
from .repair_namespace import repair_namespace
from .settings import format_size
from .store import CheckReport, ChunkStore, FileDamage, Finding, Progress, merge_ranges

EXIT_CLEAN, EXIT_REPAIRED, EXIT_USAGE, EXIT_DAMAGE, EXIT_ERROR = 0, 1, 2, 4, 8
SHOWN_PER_KIND = 50


@dataclass
class FsckResult:
    """The check before any repair, the repairs made, and the check after them."""

    store: str
    mountpoints: list[str]
    in_use: bool
    repair: bool
    verify_data: bool
    before: CheckReport
    after: CheckReport | None = None
    repairs: list[str] = field(default_factory=list)

    @property
    def final(self) -> CheckReport:
        return self.after if self.after is not None else self.before

    @property
    def exit_code(self) -> int:
        if self.final.damage:
            return EXIT_DAMAGE
        return EXIT_REPAIRED if self.after is not None and self.before.damage else EXIT_CLEAN

    @property
    def status(self) -> str:
        return {EXIT_CLEAN: "clean", EXIT_REPAIRED: "repaired", EXIT_DAMAGE: "damaged"}[self.exit_code]

    def findings(self) -> list[tuple[Finding, bool | None]]:
        """Every finding with whether it was repaired (None: no repair ran, or not damage)."""
        if self.after is None:
            return [(f, None) for f in self.before.findings]
        left = {f.key for f in self.after.damage}
        out = [(f, f.key not in left if f.category == "damage" else None) for f in self.before.findings
               if f.category == "damage"]
        before = {f.key for f in self.before.damage}
        out += [(f, False) for f in self.after.damage if f.key not in before]
        return out + [(f, None) for f in self.after.findings if f.category != "damage"]

    def unreadable_files(self) -> list[FileDamage]:
        """Files with byte ranges that cannot be read now, merged per file."""
        ranges: dict[str, tuple[tuple[str, ...], list]] = {}
        for finding in self.final.findings:
            for damage in finding.files:
                if damage.ranges:
                    entry = ranges.setdefault(damage.name, (damage.paths, []))
                    entry[1].extend(damage.ranges)
        return [FileDamage(name, paths, merge_ranges(spans)) for name, (paths, spans) in sorted(ranges.items())]

    def as_dict(self) -> dict:
        findings = self.findings()
        return {
            "store": self.store, "mountpoints": self.mountpoints, "in_use": self.in_use,
            "repair": self.repair, "verify_data": self.verify_data,
            "status": self.status, "exit_code": self.exit_code,
            "checked": self.before.counts(),
            "findings": [dict(f.as_dict(), repaired=r) for f, r in findings],
            "repairs": self.repairs,
            "unreadable_files": [d.as_dict() for d in self.unreadable_files()],
            "summary": {"damage": len(self.before.damage),
                        "repaired": sum(1 for _, r in findings if r),
                        "left": len(self.final.damage),
                        "lost_data": len(self.final.lost_data),
                        "notices": len(self.final.notices)},
        }


def run_fsck(path: str, repair: bool = False, verify_data: bool = False,
             progress: Progress | None = None) -> FsckResult:
    """Check (and with ``repair``, repair) the store at ``path``; raises ChunkfsError if it cannot."""
    path = os.path.abspath(path)
    store = _open(path, repair)
    with store:
        in_use = not repair and lock_holder(path) is not None
        result = FsckResult(path, [m.mountpoint for m in mounts_of_store(path)], in_use, repair, verify_data,
                            _check(store, verify_data, progress, in_use))
        if repair and result.before.damage:
            result.repairs = store.repair_records(result.before.bad_chunks)
            result.repairs += repair_namespace(store)
            result.after = check_store(store, False, progress, in_use=False)  # data was just verified
    return result


def _open(path: str, repair: bool) -> ChunkStore:
    if not repair:
        return ChunkStore.open(path, readonly=True)
    try:
        return ChunkStore.open(path)
    except StoreLockedError as exc:
        raise StoreLockedError(f"{exc}: unmount it before 'chunkfs fsck --repair' "
                               "(a read-only check works while mounted)") from None


def _check(store: ChunkStore, verify_data: bool, progress: Progress | None, in_use: bool) -> CheckReport:
    report = check_store(store, verify_data, progress, in_use=in_use)
    if not in_use or report.clean:
        return report
    again = check_store(store, verify_data, progress, in_use=in_use)
    persistent = {f.key for f in again.findings}
    report.findings = [f for f in report.findings if f.key in persistent]
    report.bad_chunks = {a: why for a, why in report.bad_chunks.items() if a in again.bad_chunks}
    return report


# -- text output ------------------------------------------------------------------------


def format_result(result: FsckResult) -> str:
    """The summary ``chunkfs fsck`` prints: what was checked, each finding with its files, the verdict."""
    lines = [_heading(result), _checked(result.before)]
    for title, category in (("damage", "damage"), ("lost data", "lost-data"), ("notices", "notice")):
        items = [(f, r) for f, r in result.findings() if f.category == category]
        if items:
            lines += ["", f"{title} ({len(items)}):"] + _format_findings(items)
    if result.repairs:
        lines += ["", "repairs:"] + [f"  {line}" for line in result.repairs]
    unreadable = result.unreadable_files()
    if unreadable:
        lines += ["", f"files with unreadable data ({len(unreadable)}; reading these ranges fails with EIO):"]
        lines += [f"  {d.describe()}" for d in unreadable]
    lines += ["", _verdict(result)]
    return "\n".join(lines)


def _heading(result: FsckResult) -> str:
    where = f" (mounted on {', '.join(result.mountpoints)}: read-only check)" if result.mountpoints else ""
    return f"chunkfs fsck {result.store}{where}"


def _checked(report: CheckReport) -> str:
    text = (f"checked {report.files_checked:,} files, {report.chunks_checked:,} chunks in "
            f"{report.packs_checked:,} packs, {report.inodes_checked:,} inodes")
    if report.bytes_verified:
        text += f"; verified {format_size(report.bytes_verified)} of chunk data (SHA-256)"
    return text


def _format_findings(items: list[tuple[Finding, bool | None]]) -> list[str]:
    lines, shown = [], {}
    for finding, repaired in items:
        shown[finding.kind] = shown.get(finding.kind, 0) + 1
        if shown[finding.kind] > SHOWN_PER_KIND:
            continue
        mark = "" if repaired is None else (" [repaired]" if repaired else " [NOT repaired]")
        lines.append(f"  {finding.kind}: {finding.message}{mark}")
        lines += [f"      {d.describe()}" for d in finding.files if d.ranges or d.paths]
    for kind, n in shown.items():
        if n > SHOWN_PER_KIND:
            lines.append(f"  ... and {n - SHOWN_PER_KIND} more {kind} findings (--json lists all)")
    return lines


def _verdict(result: FsckResult) -> str:
    code = result.exit_code
    if code == EXIT_DAMAGE and not result.repair:
        hint = "run 'chunkfs fsck --repair' with the store unmounted" if not result.in_use else \
            "unmount, then run 'chunkfs fsck --repair'"
        return f"result: damage found ({len(result.final.damage)} findings); {hint} (exit {code})"
    if code == EXIT_DAMAGE:
        return f"result: damage left after repair ({len(result.final.damage)} findings) (exit {code})"
    n = len(result.final.lost_data)
    lost = f"; {n} file{'s' if n != 1 else ''} with lost data" if n else ""
    word = "repaired" if code == EXIT_REPAIRED else "clean"
    return f"result: {word}{lost} (exit {code})"


class TerminalProgress:
    """One tqdm bar per phase on standard error (only used when it is a terminal)."""

    UNITS = {"verify": ("B", True)}

    def __init__(self, stream):
        self.stream = stream
        self.phase: str | None = None
        self.bar = None

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        from tqdm import tqdm  # noqa: PLC0415 (only a terminal needs it)

        if phase != self.phase:
            self.close()
            unit, scale = self.UNITS.get(phase, ("", False))
            self.bar = tqdm(total=total, desc=f"fsck: {phase}", unit=unit or "it", unit_scale=scale,
                            leave=False, file=self.stream, dynamic_ncols=True)
            self.phase = phase
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar, self.phase = None, None


__all__ = ["EXIT_CLEAN", "EXIT_DAMAGE", "EXIT_ERROR", "EXIT_REPAIRED", "EXIT_USAGE", "FsckResult",
           "TerminalProgress", "format_result", "run_fsck"]
