"""A request trace of the FUSE daemon: how many requests of each kind, how long each took to answer.

Off unless the daemon's environment names a file in ``CHUNKFS_REQUEST_TRACE``;
the throughput benchmark's ``--profile`` mode sets it (benchmarks/README.md).
Each request's time is taken in the adapter, from the moment its handler
starts to the moment it returns its answer: for a request handed to a worker
thread that includes the hop there and back.  What the daemon does not see
(the kernel's side of a round trip, the application's own work) is the
difference between a workload's wall time and the sum of these times.

At unmount the trace is written as JSON: per request kind its count, total
and largest seconds, median and 99th percentile microseconds, bytes, and how
many ran inline on the event loop against in a worker thread.  Plain Python,
no pyfuse3: the adapter calls :meth:`RequestTrace.record`.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time

ENV = "CHUNKFS_REQUEST_TRACE"
MAX_SAMPLES = 200_000  # per request kind: enough for percentiles of any benchmark, bounded memory


class RequestTrace:
    """Counts and times of the requests of one mount session."""

    def __init__(self, path: str):
        self.path = path
        self.started = time.perf_counter()
        self._lock = threading.Lock()
        self._kinds: dict[str, dict] = {}

    @classmethod
    def from_environment(cls) -> "RequestTrace | None":
        path = os.environ.get(ENV)
        return cls(path) if path else None

    def record(self, kind: str, seconds: float, nbytes: int = 0, threaded: bool = False) -> None:
        with self._lock:
            k = self._kinds.setdefault(kind, {"count": 0, "seconds": 0.0, "max_seconds": 0.0, "bytes": 0,
                                              "threaded": 0, "samples": []})
            k["count"] += 1
            k["seconds"] += seconds
            k["max_seconds"] = max(k["max_seconds"], seconds)
            k["bytes"] += nbytes
            k["threaded"] += threaded
            if len(k["samples"]) < MAX_SAMPLES:
                k["samples"].append(seconds)

    def summary(self) -> dict:
        with self._lock:
            kinds = {name: dict(k) for name, k in self._kinds.items()}
        out = {}
        for name, k in sorted(kinds.items(), key=lambda item: -item[1]["seconds"]):
            samples = sorted(k.pop("samples"))
            k["median_us"] = round(1e6 * statistics.median(samples), 1) if samples else 0.0
            k["p99_us"] = round(1e6 * samples[min(len(samples) - 1, int(0.99 * len(samples)))], 1) if samples else 0.0
            k["seconds"] = round(k["seconds"], 4)
            k["max_seconds"] = round(k["max_seconds"], 4)
            out[name] = k
        return {"session_seconds": round(time.perf_counter() - self.started, 3),
                "busy_seconds": round(sum(k["seconds"] for k in out.values()), 3), "requests": out}

    def write(self) -> None:
        """Write the summary (at unmount); a trace that cannot be written is only lost, never fatal."""
        try:
            with open(self.path, "w") as fh:
                json.dump(self.summary(), fh, indent=1)
                fh.write("\n")
        except OSError:
            pass
