"""A volume's build, in a process of its own: ``python -m idcfs.derived.child``, the job as
JSON on stdin. A converter that crashes, hangs or takes all memory costs this process, never
the one serving the tree (which kills it at its deadline).

Exit status 0: the pack named in the job is written (volumes, or the reason the series cannot
be converted). Anything else: nothing is kept, and the next use builds again.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from idcfs.derived import nifti
from idcfs.derived.pack import ERROR_FILE, write_pack

#: dcm2niix's options, the same every time (they are part of a volume's cache key): its
#: defaults file ignored (-g i), a BIDS sidecar without dates or names (-b y -ba y), no
#: compression (idcfs gzips, the same bytes everywhere), one folder (-d 0 -a y), a fixed name.
DCM2NIIX_OPTIONS = ("-g", "i", "-b", "y", "-ba", "y", "-z", "n", "-d", "0", "-a", "y", "-f", "series", "-w", "2")
#: What dcm2niix's exit statuses mean (its nii_dicom_batch.h).
DCM2NIIX_EXIT = {
    1: "conversion failed",
    2: "no valid DICOM images found",
    4: "a corrupt DICOM file",
    8: "some volumes could not be converted",
    10: "incomplete volumes",
}
#: Exit status of a build that found the series not convertible (the pack says why) - 0 too.
EXIT_MEMORY = 3


def dcm2niix_binary() -> str:
    import dcm2niix

    return str(dcm2niix.bin)


@functools.cache
def dcm2niix_version() -> str:
    """The wheel's version (read once: it is part of every volume's key)."""
    from importlib.metadata import version

    return version("dcm2niix")


def main() -> int:
    job = json.loads(sys.stdin.read())
    _limit_memory(int(job["memory"]))
    work = Path(job["work"])
    try:
        outputs = _labels(job, work) if job["kind"] == "labels" else _image(job, work)
    except MemoryError:
        return EXIT_MEMORY
    except _NotConvertible as reason:
        error = work / "error.txt"
        error.write_text(f"{reason}\n", encoding="utf-8")
        write_pack(Path(job["pack"]), {ERROR_FILE: error}, failed=True)
        return 0
    write_pack(Path(job["pack"]), outputs)
    return 0


class _NotConvertible(Exception):
    """The series cannot be converted: the message goes in conversion-error.txt."""


def _limit_memory(limit: int) -> None:
    """Cap this process (and the converter it starts) at ``limit`` bytes of address space
    where the system has a way (POSIX rlimits); Windows has none here."""
    if sys.platform == "win32":
        return
    try:
        import resource
    except ImportError:  # (tests that take POSIX calls away)
        return
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


# -- an image series: dcm2niix -------------------------------------------------------------------


def _image(job: dict[str, Any], work: Path) -> dict[str, Path]:
    source, out = Path(job["input"]), work / "out"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "SYSTEMROOT", "TMP", "TEMP")}
    env["HOME"] = env["USERPROFILE"] = str(work)  # no user's defaults file
    done = subprocess.run(
        [dcm2niix_binary(), *DCM2NIIX_OPTIONS, "-o", str(out), str(source)],
        capture_output=True,
        timeout=float(job["timeout"]),
        env=env,
        cwd=work,
        check=False,
    )
    written = sorted(p for p in out.iterdir() if p.is_file())
    volumes = [p for p in written if p.name.endswith(".nii")]
    if done.returncode != 0 or not volumes:
        meaning = DCM2NIIX_EXIT.get(done.returncode, "no volume written")
        report = _report(done.stdout + done.stderr, source, out)
        raise _NotConvertible(
            f"dcm2niix {dcm2niix_version()} could not convert this series "
            f"(exit status {done.returncode}: {meaning}).\n{report}"
        )
    base = job["base"]
    outputs: dict[str, Path] = {}
    for path in written:
        name = base + path.name[len("series") :]
        if name.endswith(".nii"):
            nifti.gzip_file(path, path.with_name(path.name + ".gz"))
            path.unlink()
            outputs[name + ".gz"] = path.with_name(path.name + ".gz")
        else:
            outputs[name] = path
    return outputs


def _report(output: bytes, source: Path, out: Path) -> str:
    """dcm2niix's own words, without what differs between runs (times, folders, its banner)."""
    lines = []
    for line in output.decode("utf-8", "replace").splitlines():
        if "Conversion required" in line or "dcm2niiX version" in line or not line.strip():
            continue
        lines.append(line.replace(str(out), "<output>").replace(str(source), "<series>"))
    return "\n".join(lines[:50])


# -- a segmentation: highdicom ---------------------------------------------------------------


def _labels(job: dict[str, Any], work: Path) -> dict[str, Path]:
    import highdicom as hd

    files = sorted(Path(job["input"]).iterdir())
    if len(files) != 1:
        raise _NotConvertible(f"a SEG series of {len(files)} instances: idcfs makes label maps of one-instance SEGs")
    try:
        seg = hd.seg.segread(files[0])
        numbers = list(seg.segment_numbers)
        volume = seg.get_volume(combine_segments=False, segment_numbers=numbers, rescale_fractional=True)
    except (ValueError, RuntimeError, KeyError, AttributeError, TypeError) as error:
        raise _NotConvertible(f"highdicom {hd.__version__} cannot read this SEG as a volume: {error}") from None
    matched, image_name, header = None, "", b""
    for candidate, header_hex in job["images"]:
        image_name, header = candidate, bytes.fromhex(header_hex)
        shape, affine = nifti.grid(header)
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
        target = hd.VolumeGeometry(lps, shape, "PATIENT")
        try:
            matched = volume.match_geometry(target, tol=1e-3)
        except (RuntimeError, ValueError):
            continue
        break
    if matched is None:
        images = ", ".join(name for name, _ in job["images"]) or "none"
        raise _NotConvertible(
            f"the SEG's frames lie on no grid of its image series' volumes ({images}) without resampling"
        )
    masks = np.asarray(matched.array)
    masks = masks >= 0.5 if masks.dtype.kind == "f" else masks > 0
    if masks.ndim == 3:
        masks = masks[..., None]
    labels = np.zeros(masks.shape[:3], dtype=np.uint8 if max(numbers) < 256 else np.uint16)
    for k, number in enumerate(numbers):  # ascending: where segments overlap, the highest number is kept
        labels[masks[..., k]] = number
    overlapping = bool((masks.sum(axis=-1, dtype=np.uint16) > 1).any())
    base, outputs = job["base"], {}
    raw = work / "labels.nii"
    nifti.write_like(raw, header, labels, "idcfs label map")
    outputs[f"{base}.nii.gz"] = work / "labels.nii.gz"
    nifti.gzip_file(raw, outputs[f"{base}.nii.gz"])
    if overlapping:
        raw = work / "segments.nii"
        nifti.write_like(raw, header, masks.astype(np.uint8), "idcfs segments, one volume each")
        outputs[f"{base}_segments.nii.gz"] = work / "segments.nii.gz"
        nifti.gzip_file(raw, outputs[f"{base}_segments.nii.gz"])
    sidecar = work / "labels.json"
    described = _describe(seg, numbers, masks, image_name, overlapping, base)
    described["ImageSeries"] = job.get("image_series")
    sidecar.write_text(json.dumps(described, indent=1, sort_keys=True) + "\n")
    outputs[f"{base}.json"] = sidecar
    return outputs


def _describe(seg: Any, numbers: list[int], masks: np.ndarray, image: str, overlapping: bool, base: str) -> dict:
    segments = []
    for k, number in enumerate(numbers):
        item = seg.get_segment_description(number)
        segments.append(
            {
                "Value": number,
                "SegmentLabel": str(item.segment_label),
                "SegmentedPropertyCategory": _code(item.segmented_property_category),
                "SegmentedPropertyType": _code(item.segmented_property_type),
                "Voxels": int(masks[..., k].sum()),
            }
        )
    return {
        "ImageVolume": image,
        "SegmentationType": str(seg.SegmentationType),
        "Segments": segments,
        "Overlapping": overlapping,
        "OverlapRule": (
            f"where segments overlap, {base}.nii.gz holds the highest segment number; "
            f"{base}_segments.nii.gz holds each segment whole (one volume per segment, in this order)"
        )
        if overlapping
        else "segments do not overlap",
    }


def _code(code: Any) -> dict[str, str]:
    return {
        "CodeValue": str(code.value),
        "CodingSchemeDesignator": str(code.scheme_designator),
        "CodeMeaning": str(code.meaning),
    }


if __name__ == "__main__":
    sys.exit(main())
