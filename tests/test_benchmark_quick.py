"""The benchmark harness at tiny scale, so the one-command benchmark (issue 6) cannot rot.

Runs chunkfs only (no peers): fast and network-free, as CI needs.  The
savings checks are the issue's acceptance bar for prefix and duplicate
(within 3 points of the ideal), measured from the store's du, so a change that
bloats the store's metadata fails here too.
"""

import hashlib
import importlib.util
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.bench

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_WORKLOADS = {"pool", "versions", "prefix", "duplicate", "unique"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Run `python -m benchmarks.run --tiny --peers none` once; return (output dir, parsed JSON)."""
    base = tmp_path_factory.mktemp("bench")
    out = base / "out"
    stdout = _run_module("benchmarks.run", "--tiny", "--peers", "none", "--no-install",
                         "--out", str(out), "--work-dir", str(base))
    with open(out / "results.json") as fh:
        return out, json.load(fh), stdout


def _run_module(module, *args, timeout=300):
    """``python -m module args`` from the repository root; its output, after asserting it succeeded."""
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return proc.stdout


def test_outputs_exist(tiny_run):
    out, doc, _ = tiny_run
    assert (out / "results.md").stat().st_size > 0
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "savings.png").stat().st_size > 0
        assert (out / "ingest.png").stat().st_size > 0
    assert {w["name"] for w in doc["workloads"]} == TINY_WORKLOADS
    assert doc["meta"]["scale"] == "tiny"


def test_scratch_is_removed(tiny_run):
    out, _, _ = tiny_run
    leftovers = [p for p in os.listdir(out.parent) if p.startswith("chunkfs-bench-")]
    assert leftovers == []


def _chunkfs(doc, workload):
    [result] = [r for r in doc["results"] if r["tool"] == "chunkfs" and r["workload"] == workload]
    assert result["status"] == "ok", result["message"]
    return result


def test_every_workload_measured(tiny_run):
    _, doc, _ = tiny_run
    for name in TINY_WORKLOADS:
        result = _chunkfs(doc, name)
        assert result["disk_bytes"] > result["empty_bytes"] > 0
        assert result["seconds"] > 0


@pytest.mark.parametrize("workload", ["prefix", "duplicate"])
def test_savings_near_ideal(tiny_run, workload):
    _, doc, _ = tiny_run
    [wl] = [w for w in doc["workloads"] if w["name"] == workload]
    assert wl["ideal_pct"] == pytest.approx(50.0, abs=0.01)
    savings = _chunkfs(doc, workload)["savings_pct"]
    assert abs(savings - wl["ideal_pct"]) <= 3.0, f"{workload}: {savings}% vs ideal {wl['ideal_pct']}%"


def test_chunking_alone_bounds_the_on_disk_savings(tiny_run):
    """The report splits chunkfs's savings into what the chunker found and what metadata cost:
    chunking alone comes from the store's unique chunk bytes, the floor adds a 32-byte address
    per unique chunk, and du holds all of that and more."""
    out, doc, _ = tiny_run
    for name in TINY_WORKLOADS:
        result = _chunkfs(doc, name)
        stored = result["settings"]["store_stored_bytes"]
        assert result["chunking_alone_pct"] == pytest.approx(100 * (1 - stored / result["logical_bytes"]), abs=0.01)
        assert result["data_bytes"] > stored + 32 * result["settings"]["store_unique_chunks"]
        assert result["chunking_alone_pct"] > result["address_floor_pct"] > result["savings_pct"]
    [duplicate] = [r for r in doc["results"] if r["tool"] == "chunkfs" and r["workload"] == "duplicate"]
    assert duplicate["chunking_alone_pct"] == pytest.approx(50.0, abs=0.01)  # the same chunks twice
    text = (out / "results.md").read_text()
    assert "## chunkfs against the best peer (%)" in text
    floor_bytes = duplicate["settings"]["store_stored_bytes"] + 32 * duplicate["settings"]["store_unique_chunks"]
    floor = 100 * (1 - floor_bytes / duplicate["logical_bytes"])
    assert duplicate["address_floor_pct"] == pytest.approx(floor, abs=0.01)
    cell = (f" {duplicate['chunking_alone_pct']:.2f} / {duplicate['address_floor_pct']:.2f} / "
            f"{duplicate['savings_pct']:.2f} | – |")
    [row] = [line for line in text.splitlines() if line.startswith("| duplicate | 50.00 |")]
    assert row.endswith(cell), text


def test_chunkfs_runs_with_compression_off_on_and_with_its_dictionary(tiny_run):
    """The dedup suite reports chunkfs three ways; what dedup and compression each save is shown apart."""
    out, doc, _ = tiny_run
    tools = {r["tool"]: r for r in doc["results"] if r["workload"] == "unique"}
    assert {"chunkfs-none", "chunkfs-nodict", "chunkfs"} <= set(tools)
    assert tools["chunkfs-none"]["settings"]["compression"].startswith("none")
    assert tools["chunkfs-nodict"]["settings"]["compression"] == "zstd:3 per chunk, no dictionary"
    for result in tools.values():  # random data: stored raw by every variant, never grown
        assert result["settings"]["store_packed_bytes"] == result["settings"]["store_stored_bytes"]
    assert "## chunkfs: dedup and compression apart (%)" in (out / "results.md").read_text()


def test_workloads_are_deterministic_and_ideal_is_exact(tmp_path):
    """Same seed, same bytes; and the versions ideal matches a brute-force count of unique content."""
    sys.path.insert(0, REPO)
    try:
        from benchmarks import workloads
    finally:
        sys.path.remove(REPO)
    a = workloads.generate("versions", str(tmp_path / "a"), "tiny", 7, str(tmp_path / "cache"))
    b = workloads.generate("versions", str(tmp_path / "b"), "tiny", 7, str(tmp_path / "cache"))
    assert [_digest(a.path, f) for f in a.files] == [_digest(b.path, f) for f in b.files]
    assert a.unique_bytes == b.unique_bytes
    # Each version differs from the last by a few small edits: sizes change only by the edits' bytes.
    sizes = [os.path.getsize(os.path.join(a.path, f)) for f in a.files]
    assert a.logical_bytes == sum(sizes)
    scale = workloads.SCALES["tiny"]
    assert all(abs(s - sizes[0]) <= 64 * scale["edits"] * scale["versions"] for s in sizes)  # edits <= 64 B
    assert 90.0 < a.ideal_pct < 91.0


@pytest.mark.slow
def test_chunk_study_savings_at_tiny_scale(tmp_path):
    """The chunk-size study's savings half (issue 6 item 5) end to end: one store per size, both tables."""
    out = tmp_path / "study"
    _run_module("benchmarks.chunk_study", "--tiny", "--no-throughput", "--sizes", "16K,64K",
                "--out", str(out), "--work-dir", str(tmp_path))
    with open(out / "chunk-study.json") as fh:
        savings = json.load(fh)["savings"]
    assert set(savings) == {str(16 * 1024), str(64 * 1024)}
    for row in savings.values():
        assert row["chunking_alone_pct"]["duplicate"] == pytest.approx(50.0, abs=0.01)
        assert row["savings_pct"]["duplicate"] < row["chunking_alone_pct"]["duplicate"]
    # bigger chunks: fewer of them, so less metadata per byte stored, and a lower pool figure from chunking
    small, big = savings[str(16 * 1024)], savings[str(64 * 1024)]
    assert big["unique_chunks"] < small["unique_chunks"]
    assert big["chunking_alone_pct"]["pool"] < small["chunking_alone_pct"]["pool"]
    text = (out / "chunk-study.md").read_text()
    assert "## Savings from chunking alone (%)" in text
    assert "| duplicate | 50.0 | 50.00 | 50.00 |" in text, text


def _digest(top, rel):
    with open(os.path.join(top, rel), "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


# -- the throughput benchmark (issue 4 / issue 6 item 4) at tiny scale -------------------------------

THROUGHPUT_OPS = {"seq_write", "cold_read", "cold_read_ra", "random_read", "untar", "rsync", "find_stat",
                  "overwrite", "rewrite", "sqlite", "git"}


@pytest.fixture(scope="module")
def throughput_run(tmp_path_factory):
    """Run `python -m benchmarks.throughput --tiny --runs 2` once (a real mount); return (out dir, JSON)."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is absent: the throughput benchmark needs a real mount")
    base = tmp_path_factory.mktemp("throughput")
    out = base / "out"
    _run_module("benchmarks.throughput", "--tiny", "--runs", "2", "--peers", "none", "--out", str(out),
                "--work-dir", str(base), timeout=300)
    with open(out / "throughput.json") as fh:
        return base, out, json.load(fh)


# The tests below share throughput_run, which mounts and takes ~15 s: marked mount and slow.


@pytest.mark.mount
@pytest.mark.slow
def test_throughput_outputs(throughput_run):
    base, out, doc = throughput_run
    assert (out / "throughput.md").stat().st_size > 0
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "throughput.png").stat().st_size > 0
    assert doc["meta"]["scale"] == "tiny"
    # nothing left behind: no scratch directory, so no store and no mountpoint (still mounted or not)
    assert [p for p in os.listdir(base) if p.startswith("chunkfs-throughput-")] == []
    with open("/proc/self/mountinfo") as fh:
        assert str(base) not in fh.read()


@pytest.mark.mount
@pytest.mark.slow
def test_throughput_every_operation_measured(throughput_run):
    _, _, doc = throughput_run
    assert THROUGHPUT_OPS <= set(doc["summary"])
    for op in THROUGHPUT_OPS:
        row = doc["summary"][op]
        assert len(row["ratios"]) == 2 and all(r > 0 for r in row["ratios"]), (op, row)
    sessions = {"write", "cold_read", "cold_read_ra", "random_read", "find_stat"}
    for run in doc["runs"]:
        assert set(run["order"]) == {"plain", "chunkfs", "passthrough"}
        # the daemons' peak RSS was read in every mount session
        assert set(run["rss_peak_bytes"]) == sessions
        assert set(run["passthrough_rss_peak_bytes"]) == sessions
        assert all(v > 0 for v in run["rss_peak_bytes"].values())
        # both FUSE mounts read at the same read-ahead in both sequential sessions, and the two sessions differ
        default, variant = (run["extra"][f"readahead_{s}_kb_by_side"] for s in ("default", "variant"))
        assert len(set(default.values())) == 1 and len(set(variant.values())) == 1
        assert set(default.values()) != set(variant.values())
    assert [r["order"][0] for r in doc["runs"]] == ["plain", "chunkfs"]  # the order rotates


@pytest.mark.mount
@pytest.mark.slow
def test_throughput_passthrough_measured_beside_chunkfs(throughput_run):
    """Every operation also ran on the plain pyfuse3 passthrough, and the report compares chunkfs with it."""
    _, out, doc = throughput_run
    for op in THROUGHPUT_OPS:
        row = doc["summary"][op]
        for key in ("passthrough", "vs_passthrough"):
            assert len(row[key]["ratios"]) == 2 and all(r > 0 for r in row[key]["ratios"]), (op, key, row)
    assert doc["summary"]["untar"]["target_share_of_passthrough"] == round(0.4 / 0.47, 3)
    assert "chunkfs ÷ passthrough" in (out / "throughput.md").read_text()


@pytest.mark.mount
@pytest.mark.slow
def test_throughput_append_grows_store_by_few_chunks(throughput_run):
    """Issue 4: appending 4 KiB to a committed file grows the store by less than 4 average chunks.

    The chunk bytes it adds are held to that; the store's disk bytes (du, LMDB included) to less than a
    MiB, far below a rewrite of the 32 MiB file: LMDB reuses the pages a commit frees only once no reader
    still sees them, so on a busy machine one small commit can be the one that extends data.mdb by some
    pages, which later commits then fill.  (The time half of the criterion is reported by the benchmark,
    not asserted: timings are noisy.)
    """
    _, _, doc = throughput_run
    for run in doc["runs"]:
        append = run["extra"]["append"]
        assert 0 < append["stored_bytes_growth"] < 4 * append["avg_chunk_size"], append
        assert 0 < append["disk_bytes_growth"] < 1 << 20, append


@pytest.mark.mount
@pytest.mark.slow
def test_throughput_compares_compression_on_and_off_run_by_run(tmp_path):
    """Issue 15: --uncompressed-side runs this checkout with --compression none beside the chunkfs side
    (which compresses), on text that compresses; the report pairs them run by run."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is absent: the throughput benchmark needs a real mount")
    out = tmp_path / "out"
    _run_module("benchmarks.throughput", "--tiny", "--runs", "1", "--peers", "none", "--no-passthrough",
                "--uncompressed-side", "--file-data", "text", "--ops", "seq_write,cold_read", "--out", str(out),
                "--work-dir", str(tmp_path), timeout=300)
    with open(out / "throughput.json") as fh:
        doc = json.load(fh)
    assert doc["meta"]["file_data"] == "text" and "chunkfs-none" in doc["meta"]["peers"]
    for op in ("seq_write", "cold_read"):
        vs = doc["summary"][op]["vs_uncompressed"]
        assert len(vs["ratios"]) == 1 and vs["ratios"][0] > 0
    [run] = doc["runs"]
    assert set(run["order"]) == {"plain", "chunkfs", "chunkfs-none"}
    assert run["extra"]["store_after_writes"]["compression_ratio"] > 1.5  # the text compressed
    assert "## Compression on against off, measured in the same runs" in (out / "throughput.md").read_text()
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "compression.png").stat().st_size > 0
    assert [p for p in os.listdir(tmp_path) if p.startswith("chunkfs-throughput-")] == []


def test_index_size_benchmark_reports_bytes_per_chunk_and_entry():
    """benchmarks/index_size.py at --tiny scale: a compacted copy's pages divided by the record counts."""
    result = json.loads(_run_module("benchmarks.index_size", "--tiny", "--json"))
    assert result["chunks"] == 2000 and result["entries"] == 2000
    assert 32 < result["index_bytes_per_chunk"] < 1000  # at least the 32-byte address, nowhere near a page
    assert 8 < result["index_bytes_per_entry"] < 1000
    assert result["live_index_bytes_per_chunk"] >= result["index_bytes_per_chunk"] * 0.9


# -- the upload service under load (issue 18) at tiny scale ------------------------------------------

def test_service_load_quick(tmp_path):
    """`python -m benchmarks.service_load --quick`: clients upload the versions workload to the real
    service and download it back; every request succeeded (the benchmark checks each status, size and
    ETag), both stores saved exactly the same, and the report was written.  Throughput is reported, not
    asserted."""
    out = tmp_path / "out"
    stdout = _run_module("benchmarks.service_load", "--quick", "--out", str(out), "--work-dir", str(tmp_path))
    with open(out / "service-load.json") as fh:
        doc = json.load(fh)
    assert doc["meta"]["scale"] == "quick" and doc["meta"]["clients"] == 4 and len(doc["runs"]) == 1
    [run] = doc["runs"]
    files = doc["meta"]["files"]
    assert run["service"]["upload"]["requests"] == run["service"]["download"]["requests"] == files == 16
    assert run["service"]["upload"]["bytes"] == run["service"]["download"]["bytes"] == doc["meta"]["logical_bytes"]
    assert run["savings_equal"] and doc["summary"]["savings_equal"]
    assert run["library"]["stats"]["savings_pct"] > 50  # versions of one document: most of it is shared
    assert run["ratio_in"] > 0 and run["service"]["upload"]["p99_ms"] >= run["service"]["upload"]["p50_ms"] > 0
    assert all(run["cpu_s_per_gb"][side] > 0 for side in ("library", "server", "clients"))
    assert "Service in / library" in (out / "service-load.md").read_text()
    assert "median: service in" in stdout
    assert [p for p in os.listdir(tmp_path) if p.startswith("chunkfs-service-load-")] == []


# -- the read path's CPU, A/B (issue 14) -----------------------------------------------------------------

def test_read_path_ab_pairs_two_checkouts(tmp_path):
    """`python -m benchmarks.read_path_ab` against this same checkout: every figure measured on both sides
    of every round, the ratios printed, the scratch removed."""
    out = _run_module("benchmarks.read_path_ab", "--baseline", REPO, "--rounds", "1", "--file-mib", "8",
                      "--work-dir", str(tmp_path))
    for side in ("baseline", "this"):
        line = next(x for x in out.splitlines() if x.startswith(f"round 1 {side}"))
        figures = dict(part.strip().rsplit(" ", 1) for part in line.split(f"{side} ", 1)[1].split(", "))
        assert set(figures) == {"random_us", "seq128k_ms", "stat_us"} and all(float(v) > 0 for v in figures.values())
    for key in ("random_us", "seq128k_ms", "stat_us"):
        assert f"{key}: baseline median" in out and "baseline ÷ this per round" in out
    assert os.listdir(tmp_path) == []


@pytest.mark.mount
@pytest.mark.slow
def test_throughput_runs_the_passthrough_that_keeps_xattrs_beside_chunkfs(tmp_path):
    """--xattr-passthrough: one more side, the passthrough forwarding xattrs; the report pairs chunkfs with it."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is absent: the throughput benchmark needs a real mount")
    out = tmp_path / "out"
    _run_module("benchmarks.throughput", "--tiny", "--runs", "1", "--peers", "none", "--xattr-passthrough",
                "--ops", "seq_write,sqlite", "--out", str(out), "--work-dir", str(tmp_path), timeout=300)
    with open(out / "throughput.json") as fh:
        doc = json.load(fh)
    [run] = doc["runs"]
    assert set(run["order"]) == {"plain", "chunkfs", "passthrough", "passthrough-xattrs"}
    for op in ("seq_write", "sqlite"):
        vs = doc["summary"][op]["vs_xattr_passthrough"]
        assert len(vs["ratios"]) == 1 and vs["ratios"][0] > 0
    assert "chunkfs ÷ passthrough-xattrs" in (out / "throughput.md").read_text()


@pytest.mark.mount
@pytest.mark.parametrize("xattrs", [False, True])
def test_the_kernel_asks_a_filesystem_with_xattrs_for_capabilities_before_every_write(tmp_path, xattrs):
    """Why the passthrough has an --xattrs side: answering getxattr costs one more round trip per write(2)."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is absent")
    sys.path.insert(0, REPO)
    from benchmarks.mounts import PassthroughMount, XattrPassthroughMount

    trace = tmp_path / "trace.json"
    mount = (XattrPassthroughMount("", str(tmp_path / "work"), str(tmp_path / "mnt")) if xattrs else
             PassthroughMount(str(tmp_path / "backing"), str(tmp_path / "mnt")))
    mount.env = {"CHUNKFS_REQUEST_TRACE": str(trace)}
    mount.mount()
    try:
        path = os.path.join(mount.mnt, "f")
        with open(path, "wb") as fh:
            for _ in range(20):
                fh.write(b"x" * 4096)
                fh.flush()
        if xattrs:
            os.setxattr(path, "user.kept", b"yes")
            assert os.getxattr(path, "user.kept") == b"yes" and "user.kept" in os.listxattr(path)
        else:
            with pytest.raises(OSError):
                os.setxattr(path, "user.kept", b"yes")
    finally:
        mount.umount("test")
        mount.cleanup()
    with open(trace) as fh:
        requests = json.load(fh)["requests"]
    assert requests["write"]["count"] == 20
    asked = requests.get("getxattr", {}).get("count", 0)
    assert asked >= 20 if xattrs else asked <= 1, requests
