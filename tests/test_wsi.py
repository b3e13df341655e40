"""Slide microscopy through the mount: OpenSlide (openslide-bin) reads a generated DICOM
whole-slide image's regions byte-identical to reading the local copy."""

from __future__ import annotations

import random

import pytest

from .conftest import TESTDATA, requires_fuse

pytestmark = [pytest.mark.integration, requires_fuse]


def test_openslide_reads_regions_through_the_mount_as_from_disk(s3_mount, slide, s3_proxy):
    openslide = pytest.importorskip("openslide")
    local = TESTDATA / "data" / "s3" / slide.aws_bucket / slide.crdc_series_uuid
    mounted = s3_mount.series_dir(slide)
    name = slide.files[0].name
    with openslide.OpenSlide(str(local / name)) as expected, openslide.OpenSlide(str(mounted / name)) as seen:
        assert seen.level_count == expected.level_count == 3
        assert seen.level_dimensions == expected.level_dimensions
        assert seen.properties["openslide.mpp-x"] == expected.properties["openslide.mpp-x"]
        rng = random.Random(7)
        for _ in range(40):
            level = rng.randrange(seen.level_count)
            width, height = seen.level_dimensions[level]
            scale = int(seen.level_downsamples[level])
            x, y = rng.randrange(0, width - 256) * scale, rng.randrange(0, height - 256) * scale
            assert (
                seen.read_region((x, y), level, (256, 256)).tobytes()
                == expected.read_region((x, y), level, (256, 256)).tobytes()
            )
    assert s3_proxy.log.count("GET", slide.crdc_series_uuid) >= 1  # it was read through the store
