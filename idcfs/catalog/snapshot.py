"""A built catalog and tree, kept on disk and memory-mapped, so a warm mount starts in well under
a second and pays memory only for the pages it touches.

Building the tree of the full index costs ~2 s and a transient gigabyte in DuckDB. Its result
depends only on the index files, the layout and the selection, and IDC releases are immutable,
so it is stored once per such key under ``CATALOG_DIR/<key>/`` (``CACHE_DIR/catalogs`` unless
``--catalog-dir`` says otherwise): the series table as an
Arrow IPC file, each level's names/offsets/first rows as raw little-endian buffers, the s5cmd
manifest of what is mounted, and ``info.json``. A folder appears atomically (written under a
temporary name, then renamed), so a crash never leaves a half-written catalog in use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import mmap
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from idcfs.catalog.index import Catalog, IndexFiles, Selection, load_catalog, spelt_as_indexed
from idcfs.catalog.layout import PRESETS, escaping_fingerprint, parse_template
from idcfs.catalog.tree import Level, Tree, build_levels
from idcfs.util.names import NameArray, arrow_string_bytes
from idcfs.version import __version__

log = logging.getLogger(__name__)

#: Bump when the files' layout or meaning changes: old snapshots are then rebuilt, not misread.
FORMAT = 3
#: Large snapshots kept per catalog folder (least recently used go first): a whole release is
#: ~400 MB. Small ones (a few collections, a manifest) cost little and are kept up to KEEP_ANY.
KEEP = 4
KEEP_ANY = 64
SMALL_BYTES = 16 << 20
#: Longest wait for the child process that builds a catalog (the full index takes ~3 s).
CHILD_BUILD_TIMEOUT = 600.0


@dataclass
class Snapshot:
    """What a mount serves from: the tree, and the s5cmd manifest of its series."""

    tree: Tree
    manifest: bytes | mmap.mmap
    folder: Path | None
    built: bool  # False when it was loaded from an earlier build


def snapshot_key(files: IndexFiles, template_text: str, selection: Selection) -> str:
    description = {
        "format": FORMAT,
        "idcfs": __version__,
        "files": files.identity(),
        "layout": PRESETS.get(template_text, template_text),
        "escaping": escaping_fingerprint(),
        "selection": selection.describe(),
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:32]


def open_snapshot(
    files: IndexFiles, template_text: str, selection: Selection, catalogs: Path | None, build_apart: bool = False
) -> Snapshot:
    """Load the snapshot for this key from the folder ``catalogs``, building (and storing) it
    when absent; ``catalogs`` None: build it, keep it in memory only.

    ``build_apart``: build it in a forked child process, then map what the child stored. The
    build's transient gigabyte in DuckDB and Arrow leaves ~75 MB behind in a heap that a
    long-lived daemon would carry for weeks; a child's heap goes back whole when it exits.
    """
    folder = None
    if catalogs is not None:
        key = _known_key(files, template_text, selection, catalogs)
        snapshot = _load_stored(catalogs / key) if key is not None else None
        if snapshot is None and build_apart and _built_in_child(files, template_text, selection, catalogs):
            key = _known_key(files, template_text, selection, catalogs)  # the child left it, or an alias
            snapshot = _load_stored(catalogs / key) if key is not None else None
            if snapshot is not None:
                snapshot.built = True
        if snapshot is not None:
            return snapshot
        folder = catalogs / _resolved_key(files, template_text, selection, catalogs)
        snapshot = _load_stored(folder)  # stored under another spelling
        if snapshot is not None:
            return snapshot
    catalog, level_names = load_catalog(files, template_text, selection)
    levels = build_levels(level_names, catalog.num_series)
    del level_names
    manifest = manifest_text(catalog.series)
    if folder is not None:
        try:
            save(folder, catalog, levels, manifest)
            _prune(folder.parent)
            snapshot = load(folder)
            snapshot.built = True
            return snapshot
        except OSError as error:
            log.warning("cannot store the catalog in %s (%s); keeping it in memory", folder, error)
    return Snapshot(Tree(catalog, levels), manifest, None, True)


def _known_key(files: IndexFiles, template_text: str, selection: Selection, catalogs: Path) -> str | None:
    """The key of a stored snapshot for ``selection`` found without querying the index: its own
    key, or the one its alias names; None when neither is stored.

    Snapshots are keyed by the selection as the index spells its values, so that
    ``Lung-PET-CT-Dx``, ``lung_pet_ct_dx`` and ``LUNG-PET-CT-DX`` share one. Finding that spelling
    takes a query of the index (DuckDB, most of a second, and its heap), so a spelling is
    remembered beside the snapshots as an alias (``<key>.alias``, naming the stored key)."""
    given = snapshot_key(files, template_text, selection)
    if (catalogs / given / "info.json").exists():
        return given
    with contextlib.suppress(OSError, UnicodeDecodeError):
        named = (catalogs / f"{given}.alias").read_text().strip()
        if named and (catalogs / named / "info.json").exists():
            return named
    return None


def _resolved_key(files: IndexFiles, template_text: str, selection: Selection, catalogs: Path) -> str:
    """The key of ``selection`` as the index spells it (a query of the index), its alias written."""
    given = snapshot_key(files, template_text, selection)
    key = snapshot_key(files, template_text, spelt_as_indexed(files, selection))  # no query if none to spell
    if key != given:
        with contextlib.suppress(OSError):
            catalogs.mkdir(parents=True, exist_ok=True, mode=0o700)
            partial = catalogs / f"{given}.alias.{os.getpid()}.tmp"
            partial.write_text(key + "\n")
            os.replace(partial, catalogs / f"{given}.alias")
    return key


def _load_stored(folder: Path) -> Snapshot | None:
    if not (folder / "info.json").exists():
        return None
    try:
        snapshot = load(folder)
        os.utime(folder / "info.json")  # recently used
        return snapshot
    except (OSError, ValueError, KeyError, pa.ArrowInvalid) as error:
        log.warning("catalog snapshot %s is unreadable (%s); rebuilding it", folder, error)
        _remove(folder)
        return None


def _built_in_child(files: IndexFiles, template_text: str, selection: Selection, catalogs: Path) -> bool:
    """Build and store the snapshot in a child process; False when that could not be done (the
    caller then builds in this process, and reports any error in the selection itself).

    Where there is ``fork`` (Linux, macOS) the child is a fork: it starts at once, with the
    index already open. Forking is safe only while this process has no other thread (a child
    would inherit their locks, held, without the threads): otherwise it is not tried. Where
    there is none (Windows) the child is a new interpreter given the build's arguments.
    """
    with contextlib.suppress(OSError):
        catalogs.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not os.access(catalogs, os.W_OK):
        return False
    if hasattr(os, "fork"):
        return threading.active_count() == 1 and _built_in_fork(files, template_text, selection, catalogs)
    return _built_in_interpreter(files, template_text, selection, catalogs)


if sys.platform != "win32":

    def _built_in_fork(files: IndexFiles, template_text: str, selection: Selection, catalogs: Path) -> bool:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        pid = os.fork()
        if pid == 0:  # the child: build, store, and leave without running this process's exit code
            status = 1
            try:
                open_snapshot(files, template_text, selection, catalogs)
                status = 0
            except BaseException:  # noqa: BLE001 - reported by the parent's own build
                pass
            finally:
                os._exit(status)
        deadline = time.monotonic() + CHILD_BUILD_TIMEOUT
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status) == 0
            time.sleep(0.05)
        _too_long(pid)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)  # killed: reaped at once
        return False

else:

    def _built_in_fork(files: IndexFiles, template_text: str, selection: Selection, catalogs: Path) -> bool:
        return False  # no fork on Windows (never called there)


#: The new interpreter's part: the build's arguments come pickled on its standard input.
_INTERPRETER_BUILD = (
    "import pickle, sys\n"
    "from idcfs.catalog.snapshot import open_snapshot\n"
    "open_snapshot(*pickle.load(sys.stdin.buffer))\n"
)


def _built_in_interpreter(files: IndexFiles, template_text: str, selection: Selection, catalogs: Path) -> bool:
    """The build in a new interpreter (``sys.executable``), for a platform without ``fork``: a
    script's own code is not run again in it (as ``multiprocessing``'s spawn would, through
    ``__main__``), and its heap goes back whole when it exits."""
    import pickle
    import subprocess

    try:
        child = subprocess.Popen(
            [sys.executable, "-c", _INTERPRETER_BUILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except OSError as error:
        log.debug("cannot start a process to build the catalog: %s", error)
        return False
    try:
        assert child.stdin is not None
        with child.stdin:
            child.stdin.write(pickle.dumps((files, template_text, selection, catalogs)))
        return child.wait(CHILD_BUILD_TIMEOUT) == 0
    except subprocess.TimeoutExpired:
        _too_long(child.pid)
        return False
    except OSError as error:  # the child died before reading its arguments
        log.debug("the catalog build's process failed: %s", error)
        return False
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)


def _too_long(pid: int) -> None:
    log.warning("the catalog build in process %d took over %gs; building it here instead", pid, CHILD_BUILD_TIMEOUT)


def manifest_text(series: pa.Table) -> bytes:
    """``cp s3://<bucket>/<crdc_series_uuid>/* .`` for every mounted series, in path order.

    Each line is built with its newline, so the Arrow array's data buffer *is* the text: no
    Python loop over a million rows.
    """
    if series.num_rows == 0:
        return b""
    bucket = series.column("aws_bucket").cast(pa.string())
    lines = pc.binary_join_element_wise("cp s3://", bucket, "/", series.column("crdc_series_uuid"), "/* .\n", "")
    lines = lines.combine_chunks() if isinstance(lines, pa.ChunkedArray) else lines
    return arrow_string_bytes(lines)[1]


def save(folder: Path, catalog: Catalog, levels: list[Level], manifest: bytes) -> None:
    temporary = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True, mode=0o700)
    try:
        with (
            pa.OSFile(str(temporary / "series.arrow"), "wb") as sink,
            pa.ipc.new_file(sink, catalog.series.schema) as writer,
        ):
            writer.write_table(catalog.series)
        for k, level in enumerate(levels):
            (temporary / f"level{k}.names").write_bytes(bytes(level.names.data))
            (temporary / f"level{k}.offsets").write_bytes(level.names.offsets.tobytes())
            (temporary / f"level{k}.first_row").write_bytes(level.first_row.astype("<i8").tobytes())
        (temporary / "manifest.txt").write_bytes(manifest)
        info = dict(catalog.info, template=catalog.template.text, depth=len(levels), saved=time.time())
        (temporary / "info.json").write_text(json.dumps(info, indent=1))  # last: marks it complete
        if folder.exists() and not (folder / "info.json").exists():
            _remove(folder)  # what an earlier removal left (on Windows, files then still mapped)
        try:
            temporary.rename(folder)
        except OSError:
            if not (folder / "info.json").exists():  # not a concurrent mount that won the race
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def load(folder: Path) -> Snapshot:
    info = json.loads((folder / "info.json").read_text())
    series = pa.ipc.open_file(pa.memory_map(str(folder / "series.arrow"), "r")).read_all()
    template = parse_template(info["template"], set(series.column_names))
    levels = []
    for k in range(int(info["depth"])):
        offsets = memoryview(_map(folder / f"level{k}.offsets")).cast("q")
        first_row = np.frombuffer(_map(folder / f"level{k}.first_row"), dtype="<i8")
        levels.append(Level(NameArray(offsets, _map(folder / f"level{k}.names")), first_row))  # type: ignore[arg-type]
    catalog = Catalog(template=template, series=series, info=info)
    return Snapshot(Tree(catalog, levels), _map(folder / "manifest.txt"), folder, False)


def _map(path: Path) -> bytes | mmap.mmap:
    """A read-only memory map of ``path`` (an empty file maps to b"")."""
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return b""
        return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)


def _remove(folder: Path) -> None:
    """Remove a stored snapshot, its mark of completeness first: on Windows a file another
    process maps cannot be removed, and what is left must never pass for a whole snapshot (a
    later save of the same key clears it)."""
    try:
        (folder / "info.json").unlink(missing_ok=True)
    except OSError:
        return  # still whole, and in use: kept
    shutil.rmtree(folder, ignore_errors=True)


def _prune(catalogs: Path) -> None:
    """Keep the KEEP most recently used large snapshots, and KEEP_ANY snapshots in all: a few
    small selections must not push out the whole release that every other mount uses. A
    snapshot removed while a mount maps it stays valid for that mount (its files are unlinked,
    not changed)."""
    try:
        entries = [p for p in catalogs.iterdir() if (p / "info.json").exists()]
        entries.sort(key=lambda p: (p / "info.json").stat().st_mtime, reverse=True)
        large = 0
        for rank, entry in enumerate(entries):
            size = (entry / "series.arrow").stat().st_size if (entry / "series.arrow").exists() else 0
            large += size > SMALL_BYTES
            if rank >= KEEP_ANY or (size > SMALL_BYTES and large > KEEP):
                _remove(entry)
        for alias in catalogs.glob("*.alias"):  # aliases of snapshots gone
            with contextlib.suppress(OSError, UnicodeDecodeError):
                if not (catalogs / alias.read_text().strip() / "info.json").exists():
                    alias.unlink()
    except OSError:
        pass
