"""The read workloads of scripts/bench.py: idcfs next to s5cmd, s3fs-fuse, rclone mount and local
disk, all reading the same generated objects from one local S3 server behind one latency proxy.

Every tool gets the same proxy (default 20 ms added per request, like in-region S3's time to first
byte), and the proxy counts the requests and bytes each workload costs.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from tests.testbed.dicomgen import generate, index_rows, series_from_row
from tests.testbed.proxy import CountingProxy, SharedLink, parse_link
from tests.testbed.servers import s3_server
from tests.testbed.wsigen import BIG_SLIDE_SERIES, generate_slide, level_file_name

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
IDCFS = str(BIN / "idcfs")

CT_SERIES = "007ab41c-6379-4528-ac02-6681b1f360d6"  # nlst CT, 202 instances (~106 MB in IDC)
SM_SERIES = "02149e90-c1f7-4cd0-91bc-925380b717b7"  # tcga_kirp SM, holds the large objects here
LS_PATIENT = "ACRIN-6698-150547"  # 50 of its series for ls -lR
BIG_SEQUENTIAL = "00000000-0000-4000-8000-000000000500.dcm"  # 500 MB, opaque bytes
BIG_RANDOM = "00000000-0000-4000-8000-000000001000.dcm"  # 1 GB, opaque bytes
#: The generated slide: level 0 is 24,576 x 16,384 pixels in 6,144 JPEG tiles (~310 MB).
SLIDE_SIZE = (24576, 16384)
SLIDE_REGIONS = 500


def bench_proxy(upstream: str, latency: float, bandwidth: float | None) -> CountingProxy:
    """The proxy every tool reads through: ``latency`` per request and ``bandwidth`` per response,
    or, when ``BENCH_LINK`` is set (``make bench LINK=100mbit,50ms``), one line's bandwidth shared
    by all connections with its latency per request (scripts/bench.py --link)."""
    link = os.environ.get("BENCH_LINK")
    if link:
        rate, per_request = parse_link(link)
        return CountingProxy(upstream, latency=per_request, link=SharedLink(rate))
    return CountingProxy(upstream, latency=latency, bandwidth=bandwidth)


# -- data -------------------------------------------------------------------------------------


def prepare_data(root: Path) -> dict:
    """Generate (once) the bench objects under ``root/s3/<bucket>/``; return where they are."""
    import duckdb

    from idcfs.catalog.index import IndexFiles

    ct = generate(root / "ct", [CT_SERIES], max_instances=200, image_size=512)[0]
    index = IndexFiles.bundled().index
    ls_uuids = [
        row[0]
        for row in duckdb.sql(
            f"SELECT crdc_series_uuid FROM read_parquet('{index}') WHERE PatientID = '{LS_PATIENT}' "
            "AND aws_bucket = 'idc-open-data' ORDER BY crdc_series_uuid LIMIT 50"
        ).fetchall()
    ]
    small = generate(root / "ls", ls_uuids, max_instances=5, image_size=64)
    data = root / "s3" / "idc-open-data"
    data.mkdir(parents=True, exist_ok=True)
    for series, source in [(ct, root / "ct"), *[(s, root / "ls") for s in small]]:
        target = data / series.crdc_series_uuid
        if not target.exists():
            shutil.copytree(source / "s3" / "idc-open-data" / series.crdc_series_uuid, target, copy_function=os.link)
    sm = data / SM_SERIES
    sm.mkdir(exist_ok=True)
    for name, size in ((BIG_SEQUENTIAL, 500 * 10**6), (BIG_RANDOM, 1000 * 10**6)):
        path = sm / name
        if not path.exists() or path.stat().st_size != size:
            with open(path, "wb") as handle:
                rng = random.Random(size)
                block = rng.randbytes(8 << 20)
                for start in range(0, size, len(block)):
                    handle.write(block[: size - start] if size - start < len(block) else block)
    sm_path = series_from_row(index_rows([SM_SERIES])[0]).path
    slide = generate_slide(root / "wsi", BIG_SLIDE_SERIES, width=SLIDE_SIZE[0], height=SLIDE_SIZE[1], levels=4)
    target = data / BIG_SLIDE_SERIES
    if not target.exists():
        shutil.copytree(root / "wsi" / "s3" / "idc-open-data" / BIG_SLIDE_SERIES, target, copy_function=os.link)
    return {"data": root / "s3", "ct": ct, "small": small, "sm_path": sm_path, "slide": slide}


# -- tools ------------------------------------------------------------------------------------


def _wait_mounted(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.ismount(path):
            with suppress(OSError):
                os.listdir(path)
                return
        time.sleep(0.1)
    raise RuntimeError(f"{path} did not mount")


def _running(pattern: str) -> bool:
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True, check=False).returncode == 0


def _unmount(path: Path) -> None:
    for command in (["fusermount3", "-u", str(path)], ["umount", str(path)], ["fusermount3", "-u", "-z", str(path)]):
        if subprocess.run(command, capture_output=True, check=False).returncode == 0:
            break
    deadline = time.monotonic() + 20
    while os.path.ismount(path) and time.monotonic() < deadline:
        time.sleep(0.1)


class Tool:
    """A way to see the bucket as files: ``root`` is where ``<bucket-relative>`` paths start."""

    name = ""
    note = ""

    def available(self) -> bool:
        return True

    def mount(self, endpoint: str, cache: Path | None) -> Path:
        raise NotImplementedError

    def unmount(self) -> None:
        pass

    def series_dir(self, info: dict, uuid: str, idcfs_path: str) -> Path:
        return self.root / uuid


class Idcfs(Tool):
    name = "idcfs"
    #: The command that mounts (``idcfs mount ...``).
    command: list[str] = [IDCFS]
    environment: dict[str, str] | None = None
    #: Where the mount command runs: ``python -m idcfs`` puts its working folder first on the
    #: path, ahead of PYTHONPATH, so another checkout must be run from inside it.
    cwd: str | None = None

    def mount(self, endpoint: str, cache: Path | None, *options: str) -> Path:
        """Mount with ``options`` (e.g. ``--volumes``) after the bench's own and ``BENCH_IDCFS_OPTIONS``."""
        self.root = getattr(self, "root", None) or Path(tempfile.mkdtemp(prefix="bench-idcfs-"))
        self.cache = cache or Path(tempfile.mkdtemp(prefix="bench-idcfs-cache-"))
        # The catalog snapshot is shared by every run, so each mount starts in a fraction of a second.
        result = subprocess.run(
            [
                *self.command,
                "mount",
                str(self.root),
                "--endpoint-url",
                endpoint,
                "--cache-dir",
                str(Path(self.cache).resolve()),
                "--cache-size",
                "8G",
                *os.environ.get("BENCH_IDCFS_OPTIONS", "").split(),
                *options,
            ],
            capture_output=True,
            text=True,
            check=False,
            env=self.environment,
            cwd=self.cwd,
        )
        if result.returncode:
            raise RuntimeError(result.stderr)
        return self.root

    def unmount(self) -> None:
        _unmount(self.root)

    def series_dir(self, info: dict, uuid: str, idcfs_path: str) -> Path:
        return self.root / idcfs_path


class IdcfsBefore(Idcfs):
    """Another checkout of idcfs (``BENCH_IDCFS_BEFORE=DIR``, e.g. a ``git worktree`` of an
    earlier commit), run with this interpreter and its packages: before and after a change,
    measured side by side in one run."""

    name = "idcfs (before)"

    def __init__(self) -> None:
        checkout = os.environ.get("BENCH_IDCFS_BEFORE", "")
        self.checkout = checkout
        self.cwd = checkout or None
        self.command = [sys.executable, "-m", "idcfs"]
        self.environment = {**os.environ, "PYTHONPATH": checkout}

    def available(self) -> bool:
        return bool(self.checkout) and (Path(self.checkout) / "idcfs" / "__main__.py").exists()


class S3fsFuse(Tool):
    name = "s3fs-fuse"

    def available(self) -> bool:
        return shutil.which("s3fs") is not None

    def mount(self, endpoint: str, cache: Path | None) -> Path:
        self.root = getattr(self, "root", None) or Path(tempfile.mkdtemp(prefix="bench-s3fs-"))
        options = f"ro,url={endpoint},use_path_request_style,public_bucket=1,endpoint=us-east-1"
        if cache:
            options += f",use_cache={cache}"
        subprocess.run(["s3fs", "idc-open-data", str(self.root), "-o", options], check=True)
        _wait_mounted(self.root)
        return self.root

    def unmount(self) -> None:
        _unmount(self.root)


class RcloneMount(Tool):
    name = "rclone mount"

    def available(self) -> bool:
        return shutil.which("rclone", path="/usr/bin") is not None

    def mount(self, endpoint: str, cache: Path | None) -> Path:
        self.root = getattr(self, "root", None) or Path(tempfile.mkdtemp(prefix="bench-rclone-"))
        remote = f":s3,provider=Other,endpoint='{endpoint}',env_auth=false:idc-open-data"
        command = [
            "/usr/bin/rclone",
            "mount",
            remote,
            str(self.root),
            "--read-only",
            "--daemon",
            "--config",
            "/dev/null",
            "--use-server-modtime",
        ]
        if cache:
            command += ["--vfs-cache-mode", "full", "--cache-dir", str(cache)]
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        subprocess.run(command, check=True, env=env)
        _wait_mounted(self.root)
        return self.root

    def unmount(self) -> None:
        _unmount(self.root)
        # Its daemon goes too: lazily unmounted while busy (a reader stopped at the time limit)
        # it stays, downloading for nobody, and the next mount on this folder never got ready.
        pattern = f"rclone mount .* {self.root}"
        subprocess.run(["pkill", "-f", pattern], check=False, capture_output=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _running(pattern):
            time.sleep(0.1)


class LocalDisk(Tool):
    name = "local disk"

    def __init__(self, data: Path) -> None:
        self.root = data / "idc-open-data"

    def mount(self, endpoint: str, cache: Path | None) -> Path:
        return self.root


class Floor(Tool):
    """The floor: scripts/floorfs.py, a trivial mfusepy file system serving the local files from
    the page cache, with idcfs's FUSE settings. No network, no cache logic: FUSE and the binding."""

    name = "FUSE floor"

    def __init__(self, data: Path) -> None:
        self.source = data / "idc-open-data"
        self.process: subprocess.Popen | None = None

    def mount(self, endpoint: str, cache: Path | None) -> Path:
        self.root = getattr(self, "root", None) or Path(tempfile.mkdtemp(prefix="bench-floor-"))
        script = Path(__file__).with_name("floorfs.py")
        self.process = subprocess.Popen([sys.executable, str(script), str(self.source), str(self.root)])
        _wait_mounted(self.root)
        time.sleep(1.1)  # its readahead is set just after INIT, as idcfs's is
        return self.root

    def unmount(self) -> None:
        if self.process is not None:
            _unmount(self.root)
            self.process.wait(timeout=30)
            self.process = None


def in_page_cache(paths: list[Path]) -> None:
    """Read files so the page cache holds them (what the floor serves from)."""
    for path in paths:
        with open(path, "rb") as handle:
            while handle.read(8 << 20):
                pass


def warm_server_etags(url: str, prefixes: list[str]) -> None:
    """LIST every prefix once before anything is timed. ``rclone serve s3`` computes each object's
    ETag (an MD5 of the whole file) at its first LIST and keeps it: 1.8 s for the big objects'
    folder, then 1 ms. Real S3 stores ETags; untimed, the first tool to list a folder would pay."""
    import urllib.request

    for prefix in prefixes:
        with urllib.request.urlopen(f"{url}/idc-open-data?list-type=2&prefix={prefix}/", timeout=120) as response:
            response.read()


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


# -- workloads --------------------------------------------------------------------------------


def cat_one_by_one(folder: Path) -> None:
    files = sorted(str(p) for p in folder.iterdir())
    subprocess.run(["sh", "-c", 'for f in "$@"; do cat "$f"; done > /dev/null', "cat", *files], check=True)


def cat_parallel(folder: Path, readers: int = 8) -> None:
    files = sorted(str(p) for p in folder.iterdir())
    listing = "\n".join(files).encode()
    subprocess.run(
        ["xargs", "-P", str(readers), "-n", str(max(1, len(files) // readers)), "cat"],
        input=listing,
        stdout=subprocess.DEVNULL,
        check=True,
    )


def dd(path: Path) -> None:
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], capture_output=True, check=True)


def random_reads(path: Path, count: int = 2000, size: int = 64 << 10, seed: int = 1) -> None:
    rng = random.Random(seed)
    length = path.stat().st_size
    if length <= size:
        raise RuntimeError(f"{path} has {length} bytes: the tool does not see the object")
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(count):
            offset = rng.randrange(0, length - size)
            if len(os.pread(fd, size, offset)) != size:
                raise RuntimeError("short read")
    finally:
        os.close(fd)


def openslide_regions(path: Path, count: int = SLIDE_REGIONS, size: int = 256, seed: int = 3) -> None:
    """A slide viewer: ``count`` random ``size`` x ``size`` regions of level 0, decoded by OpenSlide
    (a new handle each time: OpenSlide's own tile cache starts empty)."""
    import openslide

    rng = random.Random(seed)
    with openslide.OpenSlide(str(path)) as slide:
        width, height = slide.level_dimensions[0]
        for _ in range(count):
            slide.read_region((rng.randrange(0, width - size), rng.randrange(0, height - size)), 0, (size, size))


def ls_recursive(folders: list[Path]) -> None:
    subprocess.run(["ls", "-lR", *map(str, folders)], stdout=subprocess.DEVNULL, check=True)


def s5cmd_series_times(proxy: CountingProxy, workdir: Path, runs: int) -> list[float]:
    """s5cmd's download of the CT series into an emptied folder, ``runs`` times (the proxy's
    counts are the last run's)."""
    times = []
    with tempfile.TemporaryDirectory(dir=workdir) as target:
        for _ in range(runs):
            for child in Path(target).iterdir():
                child.unlink()
            proxy.log.clear()
            started = time.perf_counter()
            s5cmd_copy(proxy.url, f"s3://idc-open-data/{CT_SERIES}/*", Path(target))
            times.append(time.perf_counter() - started)
    return times


def s5cmd_copy(endpoint: str, source: str, target: Path) -> None:
    s5cmd = str(BIN / "s5cmd") if (BIN / "s5cmd").exists() else "s5cmd"
    subprocess.run(
        [s5cmd, "--endpoint-url", endpoint, "--no-sign-request", "cp", source, f"{target}/"],
        capture_output=True,
        check=True,
    )


# -- the run ----------------------------------------------------------------------------------


class Measure:
    """Median wall time of ``runs`` runs, plus the proxy's request and byte counts of the last run."""

    def __init__(self, proxy: CountingProxy, runs: int) -> None:
        self.proxy = proxy
        self.runs = runs

    def __call__(
        self, before: Callable[[], None] | None, action: Callable[[], None], after: Callable[[], None] | None = None
    ) -> tuple[float, int, int]:
        times = []
        requests = fetched = 0
        for _ in range(self.runs):
            if before:
                before()
            # Write back what earlier runs left dirty, outside the timing: a run's own writes
            # count, the last tool's do not (on this VM a page being written back stalls writers).
            os.sync()
            self.proxy.log.clear()
            started = time.perf_counter()
            action()
            times.append(time.perf_counter() - started)
            requests, fetched = self.proxy.log.count(), self.proxy.log.body_bytes
            if after:
                after()
        return statistics.median(times), requests, fetched


def bench_reads(runs: int, latency: float, bandwidth: float | None, workdir: Path) -> list[tuple[str, ...]]:
    info = prepare_data(workdir / "data")
    rows: list[tuple[str, ...]] = []
    with (
        s3_server(info["data"], log_path=workdir / "rclone-serve.log") as server,
        bench_proxy(server.url, latency, bandwidth) as proxy,
    ):
        measure = Measure(proxy, runs)
        endpoint = proxy.url
        folders = [CT_SERIES, SM_SERIES, BIG_SLIDE_SERIES, *(s.crdc_series_uuid for s in info["small"])]
        warm_server_etags(server.url, folders)
        tools: list[Tool] = [
            Idcfs(), IdcfsBefore(), S3fsFuse(), RcloneMount(), LocalDisk(info["data"]), Floor(info["data"])
        ]  # fmt: skip
        wanted = os.environ.get("BENCH_TOOLS", "").split(",")  # e.g. "idcfs,idcfs (before),s3fs-fuse"
        tools = [t for t in tools if wanted == [""] or t.name in wanted]
        skipped = [t.name for t in tools if not t.available()]
        tools = [t for t in tools if t.available()]
        idcfs_cache = Path(tempfile.mkdtemp(prefix="bench-idcfs-catalog-"))
        # Build the catalog snapshot once, outside any timing.
        warm_up = Idcfs()
        warm_up.mount(endpoint, idcfs_cache)
        warm_up.unmount()
        results: dict[str, dict[str, tuple[float, int, int]]] = {}

        def add(workload: str, tool: str, value: tuple[float, int, int]) -> None:
            results.setdefault(workload, {})[tool] = value
            print(
                f"  {workload:42} {tool:14} {value[0]:8.3f} s  {value[1]:6d} req  {value[2] / 1e6:9.1f} MB", flush=True
            )

        with tempfile.TemporaryDirectory(prefix="bench-s5cmd-") as target:

            def clean() -> None:
                for child in Path(target).iterdir():
                    child.unlink()

            add(
                "a. cold series, cat file by file",
                "s5cmd cp",
                measure(clean, lambda: s5cmd_copy(endpoint, f"s3://idc-open-data/{CT_SERIES}/*", Path(target))),
            )
            add(
                "d. 500 MB object, sequential",
                "s5cmd cp",
                measure(
                    clean,
                    lambda: s5cmd_copy(endpoint, f"s3://idc-open-data/{SM_SERIES}/{BIG_SEQUENTIAL}", Path(target)),
                ),
            )

        for tool in tools:
            _bench_tool(tool, add, measure, endpoint, info, idcfs_cache)

        rows += _table(results, skipped)
    return rows


def _bench_tool(tool: Tool, add, measure: Measure, endpoint: str, info: dict, idcfs_cache: Path) -> None:
    """Workloads a-f for one tool; each cold run on a fresh mount (and an empty idcfs cache)."""
    ct, small = info["ct"], info["small"]

    def fresh() -> None:
        tool.unmount()
        if isinstance(tool, Floor):
            in_page_cache([p for p in tool.source.rglob("*") if p.is_file()])
            tool.mount(endpoint, None)
        elif isinstance(tool, Idcfs):
            shutil.rmtree(idcfs_cache / "blocks", ignore_errors=True)
            shutil.rmtree(idcfs_cache / "listings", ignore_errors=True)
            tool.mount(endpoint, idcfs_cache)
        elif isinstance(tool, LocalDisk):
            drop_page_cache()
        else:
            tool.mount(endpoint, None)

    tool.mount(endpoint, idcfs_cache if isinstance(tool, Idcfs) else None)
    ct_dir = tool.series_dir(info, CT_SERIES, ct.path)
    sm_dir = tool.series_dir(info, SM_SERIES, info["sm_path"])
    folders = [tool.series_dir(info, s.crdc_series_uuid, s.path) for s in small]
    slide_file = tool.series_dir(info, BIG_SLIDE_SERIES, info["slide"].path) / level_file_name(BIG_SLIDE_SERIES, 0)
    try:
        add("a. cold series, cat file by file", tool.name, measure(fresh, lambda: cat_one_by_one(ct_dir)))
        add("b. cold series, 8 parallel readers", tool.name, measure(fresh, lambda: cat_parallel(ct_dir)))
        add("d. 500 MB object, sequential", tool.name, measure(fresh, lambda: dd(sm_dir / BIG_SEQUENTIAL)))
        add(
            "e. 2000 random 64 KiB reads in 1 GB, cold",
            tool.name,
            measure(fresh, lambda: random_reads(sm_dir / BIG_RANDOM)),
        )
        add(
            "e. 2000 random 64 KiB reads in 1 GB, warm",
            tool.name,
            measure(None, lambda: random_reads(sm_dir / BIG_RANDOM)),
        )
        add("f. ls -lR of 50 series", tool.name, measure(fresh, lambda: ls_recursive(folders)))
        add(
            "g. OpenSlide: 500 random 256x256 level-0 regions, cold",
            tool.name,
            measure(fresh, lambda: openslide_regions(slide_file)),
        )
        add("g. OpenSlide: 500 random 256x256 level-0 regions, warm", tool.name,
            measure(None, lambda: openslide_regions(slide_file)))  # fmt: skip
    finally:
        tool.unmount()

    # c. warm re-read after remount, with each tool's persistent cache.
    if isinstance(tool, (LocalDisk, Floor)):
        if isinstance(tool, Floor):
            tool.mount(endpoint, None)
            in_page_cache(sorted(ct_dir.iterdir()))
            add("c. warm series re-read after remount", tool.name, measure(fresh, lambda: cat_one_by_one(ct_dir)))
            tool.unmount()
            return
        add("c. warm series re-read after remount", tool.name, measure(None, lambda: cat_one_by_one(ct_dir)))
        return
    cache = idcfs_cache if isinstance(tool, Idcfs) else Path(tempfile.mkdtemp(prefix="bench-cache-"))
    tool.mount(endpoint, cache)
    cat_one_by_one(tool.series_dir(info, CT_SERIES, ct.path))

    def remount() -> None:
        tool.unmount()
        tool.mount(endpoint, cache)

    add(
        "c. warm series re-read after remount",
        tool.name,
        measure(remount, lambda: cat_one_by_one(tool.series_dir(info, CT_SERIES, ct.path))),
    )
    tool.unmount()


def _table(results: dict[str, dict[str, tuple[float, int, int]]], skipped: list[str]) -> list[tuple[str, ...]]:
    rows = []
    for workload, by_tool in sorted(results.items()):
        limit = by_tool.get("s5cmd cp")
        local = by_tool.get("local disk")
        floor = by_tool.get("FUSE floor")
        for tool, (seconds, requests, fetched) in by_tool.items():
            vs_s5cmd = f"{seconds / limit[0]:.2f}x" if limit and tool != "s5cmd cp" else ""
            vs_local = f"{seconds / local[0]:.1f}x" if local and tool != "local disk" else ""
            vs_floor = f"{seconds / floor[0]:.2f}x" if floor and tool not in ("FUSE floor", "s5cmd cp") else ""
            rows.append(
                (workload, tool, f"{seconds:.3f} s", vs_s5cmd, vs_local, vs_floor, str(requests),
                 f"{fetched / 1e6:.1f} MB")
            )  # fmt: skip
    for name in skipped:
        rows.append(("(all)", name, "skipped: not installed", "", "", "", "", ""))
    return rows
