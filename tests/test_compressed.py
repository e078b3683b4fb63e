"""CompressedImage in and out (``mirage_ros.ros.compressed``), checked against OpenCV used
independently (as image_transport's plugins use it) and rosbags' CDR.

The messages the decoder is fed are built here the way compressed_image_transport and
compressed_depth_image_transport build them (BGR conversion, cv2.imencode, the format strings,
the 12-byte compressedDepth header), not with the code under test.
"""
import struct
from types import SimpleNamespace as NS

import cv2
import numpy as np
import pytest

from mirage_ros.ros import compressed as cz
from mirage_ros.ros.convert import ConversionError


@pytest.fixture(scope="module")
def rgb():
    from mirage_ros import sim

    scene = sim.make_scene("room", 0)
    cam = sim.default_camera(64, 112).with_pose(sim.scene_trajectory(scene, "loop", 4)[0])
    f = sim.render(scene, cam, 0.0)
    return f.rgb, f.depth


def msg(data, fmt):
    return NS(format=fmt, data=np.frombuffer(bytes(data), np.uint8))


def as_image_transport(rgb, codec, **kw):
    """What compressed_image_transport publishes for an rgb8 Image: BGR pixels through cv2.imencode."""
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    if codec == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, kw.get("q", 95)])
    else:
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, kw.get("level", 3)])
    assert ok
    return msg(buf.tobytes(), f"rgb8; {codec} compressed bgr8")


def test_format_strings_as_image_transport_writes_them():
    assert cz.parse_format("rgb8; jpeg compressed bgr8") == ("rgb8", "jpeg", "bgr8")
    assert cz.parse_format("bgr8; png compressed bgr8") == ("bgr8", "png", "bgr8")
    assert cz.parse_format("mono8; png compressed ") == ("mono8", "png", "")
    assert cz.parse_format("jpeg") == (None, "jpeg", None)
    assert cz.parse_format("32FC1; compressedDepth png") == ("32FC1", "compressedDepth png", None)
    assert cz.parse_format("16UC1; compressedDepth rvl") == ("16UC1", "compressedDepth rvl", None)
    assert cz.parse_format("rgb8; qoi compressed bgr8")[1] == "qoi"


def test_png_decodes_exactly_and_jpeg_as_opencv_does(rgb):
    img, _ = rgb
    assert np.array_equal(cz.compressed_to_rgb(as_image_transport(img, "png")), img)
    m = as_image_transport(img, "jpeg", q=90)
    out = cz.compressed_to_rgb(m)
    ref = cv2.cvtColor(cv2.imdecode(np.frombuffer(bytes(m.data), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.array_equal(out, ref)
    mse = np.mean((out.astype(float) - img.astype(float)) ** 2)
    assert 10 * np.log10(255 ** 2 / mse) > 30  # the right colours, not swapped channels
    # an older publisher's bare "jpeg" (BGR) gives the same
    assert np.array_equal(cz.compressed_to_rgb(msg(bytes(m.data), "jpeg")), out)


def test_channel_order_follows_the_target_encoding(rgb):
    img, _ = rgb
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img))  # RGB bytes written as they are
    assert np.array_equal(cz.compressed_to_rgb(msg(buf.tobytes(), "rgb8; png compressed rgb8")), img)
    grey = img[..., 1].copy()
    ok, buf = cv2.imencode(".png", grey)
    assert np.array_equal(cz.compressed_to_rgb(msg(buf.tobytes(), "mono8; png compressed ")),
                          np.repeat(grey[..., None], 3, 2))
    bgra = np.concatenate([img[..., ::-1], np.full(img.shape[:2] + (1,), 255, np.uint8)], axis=2)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(bgra))
    assert np.array_equal(cz.compressed_to_rgb(msg(buf.tobytes(), "bgra8; png compressed bgra8")), img)


def test_bad_compressed_images_are_refused_with_the_reason(rgb):
    img, _ = rgb
    jpg = bytes(as_image_transport(img, "jpeg").data)
    png = bytes(as_image_transport(img, "png").data)
    cases = {
        "truncated": msg(jpg[: len(jpg) // 2], "rgb8; jpeg compressed bgr8"),
        "truncated ": msg(png[:-20], "rgb8; png compressed bgr8"),
        "neither a JPEG nor a PNG": msg(b"\x00garbage" * 50, "rgb8; jpeg compressed bgr8"),
        "says png but the data is a jpeg": msg(jpg, "rgb8; png compressed bgr8"),
        "not a jpeg or png": msg(jpg, "rgb8; qoi compressed bgr8"),
        "empty": msg(b"", "rgb8; jpeg compressed bgr8"),
    }
    for why, m in cases.items():
        with pytest.raises(ConversionError, match=why.strip()):
            cz.compressed_to_rgb(m)
    # a PNG whose header claims 100000 x 100000: refused before anything is decoded
    ihdr = struct.pack(">II", 100000, 100000) + b"\x08\x02\x00\x00\x00"
    bomb = cz._PNG_SIG + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\x00" * 4 + cz._PNG_IEND
    with pytest.raises(ConversionError, match="not a valid image size"):
        cz.compressed_to_rgb(msg(bomb, "rgb8; png compressed bgr8"))
    ok, buf = cv2.imencode(".png", (img.astype(np.uint16) * 257)[..., ::-1].copy())
    with pytest.raises(ConversionError, match="8-bit"):
        cz.compressed_to_rgb(msg(buf.tobytes(), "rgb16; png compressed bgr16"))


def _compressed_depth(depth_m, enc, depth_max=10.0, z0=100.0):
    """compressed_depth_image_transport's encoder, written out from its codec.cpp."""
    if enc == "32FC1":
        qa = np.float32(z0 * (z0 + 1.0))
        qb = np.float32(1.0 - qa / np.float32(depth_max))
        d = depth_m.astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = np.where(d < depth_max, qa / d + qb, 0)  # NaN compares false: 0
        inv = np.nan_to_num(inv, nan=0).astype(np.uint16)
        head = struct.pack("<iff", 0, float(qa), float(qb))
    else:
        inv = np.nan_to_num(depth_m * 1000.0, nan=0).astype(np.uint16)
        head = struct.pack("<iff", 0, 0.0, 0.0)
    ok, buf = cv2.imencode(".png", inv)
    return msg(head + buf.tobytes(), f"{enc}; compressedDepth png"), inv


def test_compressed_depth_both_encodings(rgb):
    _, depth = rgb
    depth = depth.astype(np.float32).copy()
    depth[0, :5] = np.nan
    m16, raw = _compressed_depth(depth, "16UC1")
    out = cz.compressed_depth_to_array(m16)
    assert np.array_equal(np.isnan(out), raw == 0)
    assert np.array_equal(out[raw > 0], raw[raw > 0].astype(np.float32) * np.float32(0.001))
    m32, inv = _compressed_depth(depth, "32FC1")
    out = cz.compressed_depth_to_array(m32)
    ok = np.isfinite(depth) & (depth < 10)
    assert np.array_equal(np.isnan(out), ~ok)
    # inverse-depth quantisation: relative error grows with depth, below 1 % under 10 m here
    rel = np.abs(out[ok] - depth[ok]) / depth[ok]
    assert rel.max() < 0.01
    for bad, why in ((msg(b"\x00" * 12, "32FC1; compressedDepth png"), "shorter"),
                     (msg(bytes(m32.data), "32FC1; compressedDepth rvl"), "not image_transport"),
                     (msg(bytes(m32.data), "rgb8; jpeg compressed bgr8"), "not image_transport"),
                     (msg(struct.pack("<iff", 3, 1, 1) + bytes(m32.data)[12:], "32FC1; compressedDepth "
                                                                               "png"), "header format"),
                     (msg(bytes(m32.data)[:60], "32FC1; compressedDepth png"), "truncated")):
        with pytest.raises(ConversionError, match=why):
            cz.compressed_depth_to_array(bad)


def test_depth_encoder_writes_what_compressed_depth_image_transport_writes(rgb):
    """encode_depth (the simulator's depth/compressedDepth) against the plugin's encoder written out
    above: the same header and 16-bit pixels (PNG bytes may differ by compression level), and the
    node's decoder reads it back. 16UC1 from metres: the nearest millimetre."""
    _, depth = rgb
    depth = depth.astype(np.float32).copy()
    depth[0, :5] = np.nan
    for enc in ("16UC1", "32FC1"):
        data, fmt = cz.encode_depth(depth, enc)
        assert fmt == f"{enc}; compressedDepth png"
        ref, ref_px = _compressed_depth(depth, enc)
        assert data[:12].tobytes() == bytes(ref.data[:12])
        px = cv2.imdecode(data[12:], cv2.IMREAD_UNCHANGED)
        assert px.dtype == np.uint16
        if enc == "32FC1":
            assert np.array_equal(px, ref_px)
        else:
            assert np.array_equal(px, np.nan_to_num(np.round(depth.astype(np.float64) * 1000), nan=0).astype(np.uint16))
        out = cz.compressed_depth_to_array(msg(data.tobytes(), fmt))
        assert np.array_equal(np.isnan(out), px == 0)


def test_encoder_writes_what_opencv_and_image_transport_read(rgb):
    img, _ = rgb
    for codec, ext, param in (("jpeg", ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 90]),
                              ("png", ".png", [cv2.IMWRITE_PNG_COMPRESSION, 3])):
        data, fmt = cz.encode_rgb(img, codec, jpeg_quality=90, png_level=3)
        assert fmt == f"rgb8; {codec} compressed bgr8"
        ok, ref = cv2.imencode(ext, np.ascontiguousarray(img[..., ::-1]), param)
        assert data.tobytes() == ref.tobytes()
        dec = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        if codec == "png":
            assert np.array_equal(dec, img)
        assert np.array_equal(cz.compressed_to_rgb(msg(data.tobytes(), fmt)), dec)


def test_rosbags_cdr_round_trip_of_the_built_message(rgb):
    from mirage_ros.ros.bag import RosbagsTypes, typestore

    img, _ = rgb
    store = typestore()
    m = cz.compressed_image_msg(RosbagsTypes(store), img, 1_500_000_123, "cam_optical", "png")
    raw = store.serialize_cdr(m, "sensor_msgs/msg/CompressedImage")
    back = store.deserialize_cdr(raw, "sensor_msgs/msg/CompressedImage")
    assert back.format == "rgb8; png compressed bgr8" and back.header.frame_id == "cam_optical"
    assert (back.header.stamp.sec, back.header.stamp.nanosec) == (1, 500_000_123)
    dec = cv2.imdecode(np.asarray(back.data, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(dec[..., ::-1], img)
    # CDR layout by hand: 4-byte encapsulation, header (sec, nanosec, frame_id), format, data
    n = len(m.data)
    assert raw[:4] == b"\x00\x01\x00\x00"
    assert struct.unpack_from("<iI", raw, 4) == (1, 500_000_123)
    assert raw[-n:] == bytes(m.data)
    assert struct.unpack_from("<I", raw, len(raw) - n - 4)[0] == n


def test_bench_compression_writes_consistent_strict_json(tmp_path):
    import json

    from mirage_ros.cli import main

    path = tmp_path / "bc.json"
    assert main(["bench", "compression", "--json", str(path), "--resolution", "32x48", "--resolution", "48x64",
                 "--frames", "1", "--repeats", "1"]) == 0
    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    rows = data["rows"]
    assert {tuple(r["resolution"]) for r in rows} == {(32, 48), (48, 64)}
    for (h, w) in ((32, 48), (48, 64)):
        mine = {(r["input"].split(" +")[0].split(" sigma")[0], r["codec"]) for r in rows if r["resolution"] == [h, w]}
        assert {("rendered", "jpeg"), ("rendered", "png"), ("depth 16UC1", "compressedDepth png"),
                ("depth 32FC1", "compressedDepth png")} <= mine
    for r in rows:
        assert r["bytes_min"] <= r["bytes_per_frame"] <= r["bytes_max"]
        assert r["ratio"] == pytest.approx(r["raw_bytes"] / r["bytes_per_frame"])
        assert r["decode_ms"] > 0
        if r["codec"] == "png":
            assert r["lossless"] and r["psnr_db"] is None
            assert r["raw_bytes"] == r["resolution"][0] * r["resolution"][1] * 3
            assert r["format"] == "rgb8; png compressed bgr8" and r["encode_ms"] > 0
        if r["codec"] == "jpeg":
            assert not r["lossless"] and r["psnr_db"] > 25 and r["format"] == "rgb8; jpeg compressed bgr8"
    assert (tmp_path / "bc.png").is_file()
