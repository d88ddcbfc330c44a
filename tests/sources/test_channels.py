"""Channel (fluorescence / multiplex), 16-bit and z-stack slides through the tifffile source.

Pixels are compared with tifffile's own reading of the same pages; the files are the corpus's
QPTIFF, 16-bit TIFF and OME-TIFFs, and small files written here with tifffile in the layouts
real scanners use (pyramidal OME-TIFF with SubIFDs, planar and interleaved samples)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.corpus import require_corpus
from tileserver.errors import RegionError, UnsupportedFeature
from tileserver.geometry import Region
from tileserver.sources import open_slide
from tileserver.sources.base import Channel
from tileserver.sources.channel_metadata import (
    display_colors,
    ome_color,
    parse_ome,
    parse_qpi,
)


def _whole(source_size: tuple[int, int]) -> Region:
    return Region(0, 0, source_size[0], source_size[1])


def test_qptiff_channels_colours_and_pixels() -> None:
    path = require_corpus() / "qptiff" / "small_vectra.qptiff"
    with open_slide(path) as source:
        info = source.info
        assert info.vendor == "qptiff"
        assert [c.name for c in info.channels] == ["DAPI", "FITC", "Cy3"]
        assert [c.color for c in info.channels] == ["0000ff", "00ff00", "ffff00"]
        assert info.dtype == "uint8" and info.planes == () and info.plane_count == 1
        assert info.mpp == (0.5, 0.5)
        assert info.associated == ("thumbnail",)
        size = info.dimensions
        pixels = source.read_channels(0, _whole(size))
        expected = np.moveaxis(tifffile.imread(path, series=0), 0, -1)
        assert pixels.shape == (size.height, size.width, 3) and pixels.dtype == np.uint8
        assert np.array_equal(pixels, expected)
        assert pixels.any()
        with pytest.raises(UnsupportedFeature, match="read_channels"):
            source.read_region(0, Region(0, 0, 10, 10))
        assert source.read_associated("thumbnail").shape == (360, 480, 3)


def test_16_bit_gray_page_is_one_uint16_channel() -> None:
    path = require_corpus() / "generic-tiff" / "pathml_smalltif.tif"
    with open_slide(path) as source:
        assert source.info.channels == (Channel("Channel 0"),)
        assert source.info.dtype == "uint16"
        pixels = source.read_channels(0, _whole(source.info.dimensions))
        expected = tifffile.imread(path, key=0)
        assert pixels.dtype == np.uint16 and np.array_equal(pixels[:, :, 0], expected)
        assert int(expected.max()) > 255  # really 16-bit data, not 8-bit widened


def test_signed_and_time_series_ome_tiffs_are_refused_by_name() -> None:
    corpus = require_corpus() / "ome-tiff"
    with pytest.raises(UnsupportedFeature, match=r"8-bit signed integer samples \(int8\)"):
        open_slide(corpus / "multi-channel-z-series.ome.tif")
    with pytest.raises(UnsupportedFeature, match="7 time points") as refused:
        open_slide(corpus / "4D-series.ome.tiff")
    assert "4D-series.ome.tiff" in str(refused.value) and "int8" in str(refused.value)


@pytest.fixture(scope="module")
def ome_pyramid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """C=3, Z=4, 16-bit, two levels in SubIFDs, 64-pixel zlib tiles, channel metadata."""
    rng = np.random.default_rng(7)
    data = rng.integers(0, 65536, (3, 4, 300, 333), dtype=np.uint16)
    path = tmp_path_factory.mktemp("ome") / "pyramid.ome.tif"
    metadata = {
        "axes": "CZYX",
        "Channel": {
            "Name": ["DAPI", "FITC", "Cy5"],
            "Color": [-16776961, 16711935, 65535],  # OME RGBA as signed 32-bit integers
            "EmissionWavelength": [461, 0.5195, 670],
            "EmissionWavelengthUnit": ["nm", "µm", "nm"],
        },
        "PhysicalSizeX": 0.25,
        "PhysicalSizeY": 0.25,
        "PhysicalSizeZ": 1.5,
    }
    with tifffile.TiffWriter(path, ome=True, bigtiff=True) as tif:
        tif.write(data, subifds=1, tile=(64, 64), compression="zlib", metadata=metadata)
        tif.write(data[:, :, ::2, ::2], subfiletype=1, tile=(64, 64), compression="zlib")
    return path, data


def test_pyramidal_ome_tiff_levels_planes_and_metadata(
    ome_pyramid: tuple[Path, np.ndarray],
) -> None:
    path, data = ome_pyramid
    with open_slide(path) as source:
        info = source.info
        assert info.vendor == "ome" and info.dtype == "uint16"
        assert info.channels == (
            Channel("DAPI", "ff0000", 461.0),
            Channel("FITC", "00ff00", 519.5),
            Channel("Cy5", "0000ff", 670.0),
        )
        assert info.planes == (0.0, 1.5, 3.0, 4.5) and info.default_plane == 1
        assert info.mpp == (0.25, 0.25)
        assert [lv.size for lv in info.levels] == [(333, 300), (167, 150)]
        assert info.levels[0].tile == (64, 64)
        for level in (0, 1):
            expected = tifffile.imread(path, level=level)
            h, w = expected.shape[-2:]
            for z in range(4):
                pixels = source.read_channels(level, Region(0, 0, w, h), z)
                assert np.array_equal(pixels, np.moveaxis(expected[:, z], 0, -1)), (level, z)
        # Parts outside the level are dark (0), the inside still the file's.
        edge = source.read_channels(0, Region(300, 280, 50, 40), 2)
        assert (edge[20:] == 0).all() and (edge[:, 33:] == 0).all()
        assert np.array_equal(edge[:20, :33], np.moveaxis(data[:, 2, 280:, 300:], 0, -1))
        with pytest.raises(RegionError, match="plane 4"):
            source.read_channels(0, Region(0, 0, 8, 8), 4)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("planar", ["separate", "contig"])
def test_multi_channel_tiff_planar_or_interleaved(tmp_path: Path, dtype: type, planar: str) -> None:
    rng = np.random.default_rng(3)
    top = np.iinfo(dtype).max
    data = rng.integers(0, top, (5, 130, 150), dtype=dtype, endpoint=True)
    path = tmp_path / "five.tif"
    image = data if planar == "separate" else np.moveaxis(data, 0, -1)
    tifffile.imwrite(
        path,
        image,
        planarconfig=planar,
        photometric="minisblack",
        tile=(32, 48),
        compression="zlib",
        byteorder=">",  # big-endian samples come out in native order
        metadata=None,
    )
    with open_slide(path) as source:
        assert [c.name for c in source.info.channels] == [f"Channel {i}" for i in range(5)]
        assert source.info.dtype == np.dtype(dtype).name
        region = Region(17, 9, 120, 111)
        pixels = source.read_channels(0, region)
        expected = np.moveaxis(data, 0, -1)[9:120, 17:137]
        assert pixels.dtype == dtype and np.array_equal(pixels, expected)


def test_page_per_channel_tiff(tmp_path: Path) -> None:
    data = np.random.default_rng(5).integers(0, 4000, (4, 90, 70), dtype=np.uint16)
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tif:
        for page in data:
            tif.write(page, photometric="minisblack", metadata=None)
    with open_slide(path) as source:
        assert len(source.info.channels) == 4
        pixels = source.read_channels(0, Region(0, 0, 70, 90))
        assert np.array_equal(pixels, np.moveaxis(data, 0, -1))


@pytest.mark.parametrize(
    ("dtype", "named"),
    [
        (np.float32, r"32-bit floating-point samples \(float32\)"),
        (np.complex64, r"64-bit complex samples \(complex64\)"),
        (np.int16, r"16-bit signed integer samples \(int16\)"),
        (np.uint32, r"32-bit unsigned integer samples \(uint32\)"),
    ],
)
def test_unsupported_sample_formats_are_refused_by_name(
    tmp_path: Path, dtype: type, named: str
) -> None:
    path = tmp_path / "odd.tif"
    tifffile.imwrite(path, np.ones((3, 40, 50), dtype=dtype), photometric="minisblack")
    with pytest.raises(UnsupportedFeature, match=named) as refused:
        open_slide(path)
    assert "odd.tif" in str(refused.value)


def test_rgb_z_stack_reads_each_plane_and_copies_no_tiles(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    data = rng.integers(0, 256, (3, 200, 260, 3), dtype=np.uint8)
    path = tmp_path / "stack.ome.tif"
    metadata = {"axes": "ZYXS", "PhysicalSizeZ": 0.8}
    tifffile.imwrite(path, data, photometric="rgb", tile=(64, 64), metadata=metadata)
    with open_slide(path) as source:
        info = source.info
        assert info.channels == () and info.planes == (0.0, 0.8, 1.6)
        for z in range(3):
            assert np.array_equal(source.read_region(0, Region(0, 0, 260, 200), z), data[z])
        assert source.raw_tile_codec(0) is None and source.raw_tile(0, 0, 0) is None
        with pytest.raises(UnsupportedFeature, match="RGB slide has no channels"):
            source.read_channels(0, Region(0, 0, 8, 8))


def test_rgb_slide_has_no_channels_and_one_plane(tmp_path: Path) -> None:
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, np.full((64, 80, 3), 200, np.uint8), photometric="rgb", tile=(32, 32))
    with open_slide(path, "tifffile") as source:
        info = source.info
        assert info.channels == () and info.dtype == "uint8" and info.plane_count == 1
        with pytest.raises(UnsupportedFeature):
            source.read_channels(0, Region(0, 0, 8, 8))
        with pytest.raises(RegionError, match="plane 1"):
            source.read_region(0, Region(0, 0, 8, 8), 1)


def test_region_cap_counts_bytes_of_all_channels(ome_pyramid: tuple[Path, np.ndarray]) -> None:
    with open_slide(ome_pyramid[0]) as source, pytest.raises(RegionError, match="cap"):
        # 3 uint16 channels: 6 bytes a pixel, so half RGB's pixel cap.
        source.read_channels(0, Region(0, 0, 16384, 16384 // 2 + 1))


def test_ome_colour_and_units() -> None:
    assert ome_color("-16776961") == "ff0000"  # 0xFF0000FF: opaque red
    assert ome_color("16711935") == "00ff00"  # 0x00FF00FF
    assert ome_color("65535") == "0000ff"
    assert ome_color("-1") == "ffffff" and ome_color("red") is None
    xml = (
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image><Pixels '
        'PhysicalSizeZ="500" PhysicalSizeZUnit="nm"><Channel Name="A" '
        'EmissionWavelength="0.6" EmissionWavelengthUnit="µm"/><Channel Fluor="Cy5" '
        'EmissionWavelength="-3"/><Channel/></Pixels></Image></OME>'
    )
    parsed = parse_ome(xml)
    assert parsed.z_spacing_um == 0.5
    assert parsed.channels == (
        Channel("A", None, 600.0),
        Channel("Cy5", None, None),
        Channel("Channel 2", None, None),
    )


def test_qpi_description_and_default_colours() -> None:
    xml = (
        '<?xml version="1.0" encoding="utf-16"?><PerkinElmer-QPI-ImageDescription><Name>CD8'
        "</Name><Color>255,128,0</Color><ScanProfile><ScanResolution><PixelSizeMicrons>0.25"
        "</PixelSizeMicrons><Magnification>40</Magnification></ScanResolution></ScanProfile>"
        "</PerkinElmer-QPI-ImageDescription>"
    )
    page = parse_qpi(xml, 0)
    assert page == type(page)(Channel("CD8", "ff8000", None), 0.25, 40.0)
    assert parse_qpi("<X><Color>300,0,0</Color></X>", 4).channel == Channel("Channel 4")
    assert display_colors((Channel("DAPI"),)) == ("ffffff",)
    assert display_colors((Channel("a"), Channel("b", "123456"), Channel("c"))) == (
        "0000ff",
        "123456",
        "ff0000",
    )


def test_chunks_smaller_than_the_source_tiles_read_the_same(tmp_path: Path) -> None:
    """A converter reads 256-px chunks of 512-px tiles, through the decoded-segment cache."""
    data = np.random.default_rng(2).integers(0, 65536, (3, 700, 900), dtype=np.uint16)
    path = tmp_path / "big-tiles.tif"
    tifffile.imwrite(path, data, photometric="minisblack", tile=(512, 512), compression="zlib")
    expected = np.moveaxis(data, 0, -1)
    with open_slide(path) as source:
        for _ in range(2):  # cold, then from the cache
            for y in range(0, 700, 256):
                for x in range(0, 900, 256):
                    chunk = source.read_channels(0, Region(x, y, 256, 256))
                    assert chunk.flags.writeable
                    h, w = min(256, 700 - y), min(256, 900 - x)
                    assert np.array_equal(chunk[:h, :w], expected[y : y + h, x : x + w])


def test_info_describes_channels_and_planes(ome_pyramid: tuple[Path, np.ndarray]) -> None:
    from tileserver.cli import check_pixels, slide_summary

    with open_slide(ome_pyramid[0]) as source:
        check_pixels(source)  # reads channels, not RGB
        summary = slide_summary(source)
    assert summary["dtype"] == "uint16" and summary["planes"] == [0.0, 1.5, 3.0, 4.5]
    assert summary["channels"][0] == {"name": "DAPI", "color": "ff0000", "emission_nm": 461.0}


def test_eight_threads_agree_with_one(ome_pyramid: tuple[Path, np.ndarray]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(4)
    regions = [
        Region(int(rng.integers(-40, 333)), int(rng.integers(-40, 300)), 70, 90) for _ in range(48)
    ]
    with open_slide(ome_pyramid[0]) as source:
        serial = [source.read_channels(0, r, 3) for r in regions]
    with open_slide(ome_pyramid[0]) as source, ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda r: source.read_channels(0, r, 3), regions))
    assert all(np.array_equal(a, b) for a, b in zip(serial, parallel, strict=True))
