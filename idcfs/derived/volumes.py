"""Volumes built on first use, once per series, kept in the disk cache.

One build per volume however many ask: threads of this process share one build (a future),
processes sharing the cache folder take a lock file and find the other's pack once it is done.
A build fetches the series through the block cache (in parallel), converts it in a child process
(:mod:`idcfs.derived.child`) with a deadline and a memory cap, and hands the pack to the disk
tier. A network failure or a converter that crashes, hangs or runs out of memory fails that
build (``OSError``), and nothing of it is kept: the next use builds again. A series the converter
refuses gets a pack holding only the reason: that answer is as reproducible as a volume.

Locks: ``_lock`` guards the in-flight builds and the recent packs only; it is never held across
a build, a fetch or a wait.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachetools import LRUCache

from idcfs.blocks.disk_tier import DiskTier, OpenBlock, seal
from idcfs.blocks.object_file import ObjectFile
from idcfs.blocks.reader import ObjectRef, Reader
from idcfs.derived import child, crosslock, nifti
from idcfs.derived.kinds import LABELS
from idcfs.derived.pack import HEAD_BYTES, Pack, PackedFile, PackError, header_length, read_header

log = logging.getLogger(__name__)

#: The format of what a build makes; part of every key (a change here builds everything anew).
FORMAT = 2
#: Objects of a series fetched at once during a build.
FETCH_WORKERS = 16
#: A child's memory cap: this much, plus this many times the series' bytes.
MEMORY_BASE, MEMORY_PER_BYTE = 2 << 30, 4
#: A pack larger than this share of the disk cache is not kept (it would push out everything
#: else, then itself): the build fails with a clear reason instead.
MAX_SHARE_OF_CACHE = 0.5
#: Builds at once in a process (each a child converting a whole series in memory, and a fetch of
#: its series): more wait for a turn, within their deadline.
BUILDS_AT_ONCE = 2
#: Packs whose headers are kept in memory (stat and listing without a disk read).
PACKS_KEPT = 1024
#: A child in a session of its own (POSIX), so that a kill at its deadline takes its converter too.
_SESSIONS = hasattr(os, "killpg") and hasattr(os, "setsid")
#: Leftovers of builds (a killed process) older than this are removed when a tree opens.
STALE_WORK = 24 * 3600.0


@dataclass(frozen=True)
class SeriesToBuild:
    """A series as a build needs it: what it is and how its files are reached."""

    uuid: str
    kind: str
    #: The series folder's name: its volumes are named after it.
    base: str
    objects: Callable[[], list[ObjectRef]]


@dataclass(frozen=True)
class Built:
    """A built folder: its pack, where the disk tier keeps it, and its length there."""

    key: str
    length: int
    pack: Pack


class Volumes:
    """The ``.nifti`` folders' contents, built on first use."""

    def __init__(
        self,
        reader: Reader,
        disk: DiskTier,
        work_dir: Path,
        timeout: float,
        series_limit: int,
    ) -> None:
        #: Series larger than this (bytes, as the catalog says) get no volume.
        self.series_limit = series_limit
        self._reader = reader
        self._disk = disk
        self._work = work_dir
        self._timeout = timeout
        #: The image series of a SeriesInstanceUID (set by the tree that shows the volumes).
        self.image_series: Callable[[str], SeriesToBuild | None] = lambda uid: None
        self._lock = threading.Lock()
        self._in_flight: dict[str, concurrent.futures.Future[Built]] = {}
        self._packs: LRUCache[str, Built] = LRUCache(maxsize=PACKS_KEPT)
        # A SEG's uuid -> the SeriesInstanceUID of the image series it references.
        self._references: LRUCache[str, str | None] = LRUCache(maxsize=PACKS_KEPT)
        self._building: dict[str, str] = {}  # key -> series folder, while building
        self._counts = {"built": 0, "not_convertible": 0, "failed": 0, "found": 0}
        self._turns = threading.BoundedSemaphore(BUILDS_AT_ONCE)
        self._waiting = 0  # builds waiting for a turn
        work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._sweep()

    # -- what a face asks -----------------------------------------------------------------------

    def contents(self, series: SeriesToBuild) -> Built:
        """The built folder of ``series``: from memory, from the disk cache, or built now."""
        key = self._key(series)
        with self._lock:
            built = self._packs.get(key)
            future = self._in_flight.get(key)
            leader = built is None and future is None
            if leader:
                future = self._in_flight[key] = concurrent.futures.Future()
        if built is not None:
            return built
        assert future is not None
        if not leader:
            try:
                return future.result(timeout=self._timeout + self._reader.store.retry.longest_operation)
            except concurrent.futures.TimeoutError:
                raise OSError(errno.ETIMEDOUT, f"waited too long for the volume of {series.base}") from None
        try:
            built = self._load_or_build(key, series)
        except BaseException as error:
            future.set_exception(error)
            raise
        else:
            future.set_result(built)
            with self._lock:
                self._packs[key] = built
            return built
        finally:
            with self._lock:
                self._in_flight.pop(key, None)

    def open(self, series: SeriesToBuild, built: Built, file: PackedFile) -> OpenVolumeFile:
        """``file`` of a built folder, to read ranges from; close it when done."""
        return OpenVolumeFile(self, series, built, file)

    def built_again(self, series: SeriesToBuild, built: Built) -> Built:
        """The folder of ``series`` built again, when the disk cache let go of its pack (a build
        is deterministic: the same bytes, or EIO, never other bytes)."""
        with self._lock:
            if self._packs.get(built.key) == built:
                del self._packs[built.key]
        rebuilt = self.contents(series)
        if rebuilt.pack != built.pack:
            raise OSError(errno.EIO, f"the volume of {series.base} was built again with other contents")
        return rebuilt

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"building": sorted(self._building.values()), "waiting": self._waiting, **self._counts}

    # -- building ---------------------------------------------------------------------------------

    def _key(self, series: SeriesToBuild) -> str:
        recipe: dict[str, Any] = {
            "format": FORMAT,
            "series": series.uuid,
            "kind": series.kind,
            "base": series.base,
            "dcm2niix": [child.dcm2niix_version(), *child.DCM2NIIX_OPTIONS],
            "gzip": nifti.GZIP_LEVEL,
        }
        if series.kind == LABELS:
            import highdicom

            image = self._referenced(series)
            recipe["highdicom"] = highdicom.__version__
            recipe["image"] = None if image is None else [image.uuid, image.base]
        digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:32]
        return f"volume/{digest}"

    def _load_or_build(self, key: str, series: SeriesToBuild) -> Built:
        found = self._stored(key)
        if found is not None:
            self._count("found")
            return found
        name = key.rsplit("/", 1)[1]
        deadline = self._timeout + self._reader.store.retry.longest_operation
        lock = self._work / f"{name}.lock"
        try:
            with crosslock.exclusive(lock, deadline):
                found = self._stored(key)  # another process built it meanwhile
                if found is not None:
                    self._count("found")
                    return found
                built = self._build_in_turn(key, name, series, deadline)
                # Kept: later users find the pack before they take the lock. (One who waited on
                # this file and one who makes a new one could both build if the pack went in
                # between: the same bytes, twice; no lock file left behind per volume.)
                with contextlib.suppress(OSError):
                    lock.unlink()
                return built
        except TimeoutError as error:
            raise OSError(errno.ETIMEDOUT, f"the volume of {series.base}: {error}") from None

    def _build_in_turn(self, key: str, name: str, series: SeriesToBuild, deadline: float) -> Built:
        """:meth:`_build`, once one of the :data:`BUILDS_AT_ONCE` turns is free (memory and cores
        stay bounded however many folders are listed at once)."""
        with self._lock:
            self._waiting += 1
        try:
            got = self._turns.acquire(timeout=deadline)
        finally:
            with self._lock:
                self._waiting -= 1
        if not got:
            raise OSError(errno.ETIMEDOUT, f"the volume of {series.base} waited {deadline:g}s for a turn to build")
        try:
            with self._lock:
                self._building[key] = series.base
            return self._build(key, name, series)
        finally:
            with self._lock:
                self._building.pop(key, None)
            self._turns.release()

    def _stored(self, key: str) -> Built | None:
        length = self._disk.stored_length(key)
        if length is None:
            return None
        head = self._disk.read(key, length, 0, min(length, HEAD_BYTES))
        try:
            if head is not None and header_length(bytes(head[:16])) > len(head):
                head = self._disk.read(key, length, 0, header_length(bytes(head[:16])))
            if head is None:
                return None
            return Built(key, length, read_header(bytes(head)))
        except PackError as error:
            log.warning("volume %s in the disk cache is damaged (%s); building it again", key, error)
            self._disk.discard(key)
            return None

    def _build(self, key: str, name: str, series: SeriesToBuild) -> Built:
        work = self._work / f"{name}.{os.getpid()}.{threading.get_ident()}"
        shutil.rmtree(work, ignore_errors=True)
        (work / "in").mkdir(parents=True)
        started = time.monotonic()
        try:
            objects = series.objects()
            log.info(
                "building the volume of %s (%d objects, %d MB)",
                series.base,
                len(objects),
                sum(o.size for o in objects) // 1_000_000,
            )
            self._fetch(objects, work / "in")
            job: dict[str, Any] = {
                "kind": series.kind,
                "input": str(work / "in"),
                "work": str(work),
                "base": series.base,
                "pack": str(work / "pack"),
                "timeout": self._timeout,
                "memory": MEMORY_BASE + MEMORY_PER_BYTE * sum(o.size for o in objects),
            }
            if series.kind == LABELS:
                job["images"] = self._image_headers(series)
                image = self._referenced(series)
                job["image_series"] = None if image is None else image.base
            self._convert(job, series)
            pack = read_header((work / "pack").read_bytes()[:HEAD_BYTES])
            length = seal(work / "pack")
            if length > self._disk.capacity * MAX_SHARE_OF_CACHE:
                raise OSError(
                    errno.EFBIG,
                    f"the volume of {series.base} ({length} bytes) is more than half the disk cache: "
                    "a larger --cache-size keeps it",
                )
            if not self._disk.adopt(key, work / "pack", timeout=60.0):
                raise OSError(errno.EIO, f"the disk cache cannot keep the volume of {series.base} now")
        except BaseException:
            self._count("failed")
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        self._count("not_convertible" if pack.failed else "built")
        log.info(
            "volume of %s %s in %.1fs (%d bytes)",
            series.base,
            "not convertible" if pack.failed else "built",
            time.monotonic() - started,
            length,
        )
        return Built(key, length, pack)

    def _fetch(self, objects: list[ObjectRef], folder: Path) -> None:
        """The series' objects into ``folder``, in parallel, through the block cache."""
        block = self._reader.block_size

        def fetch(ref: ObjectRef) -> None:
            with open(folder / ref.key.rsplit("/", 1)[-1], "wb") as out:
                for offset in range(0, ref.size, block):
                    out.write(self._reader.read(ref, offset, block))

        with concurrent.futures.ThreadPoolExecutor(FETCH_WORKERS, thread_name_prefix="idcfs-volume-fetch") as pool:
            for done in [pool.submit(fetch, ref) for ref in objects]:
                done.result()  # the first failure fails the build (the rest finish or fail alike)

    def _convert(self, job: dict[str, Any], series: SeriesToBuild) -> None:
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
        process = subprocess.Popen(
            [sys.executable, "-m", "idcfs.derived.child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=job["work"],
            env=env,
            start_new_session=_SESSIONS,  # the converter it starts goes with it at the deadline
        )
        try:
            _, stderr = process.communicate(json.dumps(job).encode(), timeout=self._timeout)
        except subprocess.TimeoutExpired:
            _kill(process)
            raise OSError(
                errno.ETIMEDOUT, f"the volume of {series.base} took longer than {self._timeout:g}s to build"
            ) from None
        finally:
            if process.poll() is None:
                _kill(process)
        if process.returncode != 0:
            status = process.returncode
            why = "ran out of memory" if status == child.EXIT_MEMORY else f"exit status {status}"
            tail = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            raise OSError(errno.EIO, f"the build of the volume of {series.base} failed ({why}) {tail[0]}".rstrip())

    def _referenced(self, series: SeriesToBuild) -> SeriesToBuild | None:
        """The image series a SEG references (read from its first object's header, once)."""
        with self._lock:
            known = series.uuid in self._references
            uid = self._references.get(series.uuid)
        if not known:
            uid = self._read_reference(series)
            with self._lock:
                self._references[series.uuid] = uid
        return None if uid is None else self.image_series(uid)

    def _read_reference(self, series: SeriesToBuild) -> str | None:
        import pydicom
        from pydicom.errors import InvalidDicomError

        objects = series.objects()
        if not objects:
            return None
        try:
            stream = io.BufferedReader(ObjectFile(self._reader, objects[0]), 64 << 10)
            header = pydicom.dcmread(stream, stop_before_pixels=True)
        except OSError:
            raise  # the network: this use fails, the next tries again
        except (InvalidDicomError, ValueError, EOFError, struct.error, AttributeError, KeyError, TypeError) as error:
            log.info("SEG %s: its header cannot be read (%s)", series.base, error)
            return None
        for item in header.get("ReferencedSeriesSequence", []):
            uid = item.get("SeriesInstanceUID")
            if uid:
                return str(uid)
        return None

    def _image_headers(self, series: SeriesToBuild) -> list[tuple[str, str]]:
        """The NIfTI headers of the volumes of the image series a SEG references (its main
        volume first), for the child to match the SEG's grid to."""
        image = self._referenced(series)
        if image is None:
            return []
        built = self.contents(image)
        volumes = sorted(
            (f for f in built.pack.files if f.name.endswith(".nii.gz")),
            key=lambda f: (f.name != f"{image.base}.nii.gz", f.name),
        )
        headers = []
        for file in volumes:
            opened = self.open(image, built, file)
            try:
                start = bytes(opened.read(0, 64 << 10))
            finally:
                opened.close()
            header = zlib.decompressobj(wbits=31).decompress(start, nifti.HEADER_BYTES)
            headers.append((file.name, header.hex()))
        return headers

    def _count(self, what: str) -> None:
        with self._lock:
            self._counts[what] += 1

    def _sweep(self) -> None:
        """Remove what killed builds left (their folders), and old lock files."""
        stale = time.time() - STALE_WORK
        with contextlib.suppress(OSError), os.scandir(self._work) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.stat().st_mtime >= stale:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        os.unlink(entry.path)


class OpenVolumeFile:
    """A file of a built folder, open: its pack held open in the disk cache (one descriptor, so
    the kernel's readahead follows a reader going through it), built again if the cache let go
    of it meanwhile."""

    #: (A face may cache it: a built file never changes.)
    live = False

    def __init__(self, volumes: Volumes, series: SeriesToBuild, built: Built, file: PackedFile) -> None:
        self._volumes, self._series, self._built, self._file = volumes, series, built, file
        self.size = file.size
        self._block: OpenBlock | None = None
        self._lock = threading.Lock()  # around the held pack only, never across a build

    def read(self, offset: int, size: int) -> memoryview | bytes:
        if offset < 0 or size < 0:
            raise ValueError("negative offset or size")
        end = min(self.size, offset + size)
        if offset >= end:
            return b""
        start, stop = self._file.offset + offset, self._file.offset + end
        for attempt in range(2):
            with self._lock:
                if self._block is None:
                    self._block = self._volumes._disk.open_block(self._built.key, self._built.length)
                block = self._block
            data = None if block is None else block.read(start, stop)
            if data is not None:
                return data
            self._let_go(block)
            if attempt == 0:
                self._built = self._volumes.built_again(self._series, self._built)
        raise OSError(errno.EIO, f"the disk cache cannot keep the volume of {self._series.base}")

    def _let_go(self, block: OpenBlock | None) -> None:
        with self._lock:
            if self._block is block:
                self._block = None
        if block is not None:
            block.close()

    def close(self) -> None:
        """Idempotent."""
        with self._lock:
            block, self._block = self._block, None
        if block is not None:
            block.close()


def _kill(process: subprocess.Popen[bytes]) -> None:
    """The child and what it started (its session, on POSIX), at once."""
    with contextlib.suppress(OSError):
        if sys.platform != "win32" and _SESSIONS:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
