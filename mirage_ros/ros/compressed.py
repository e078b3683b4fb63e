"""``sensor_msgs/CompressedImage`` in and out, exactly as image_transport's plugins write it.
No rclpy import; OpenCV does the coding (as the plugins do).

- ``compressed`` (compressed_image_transport): ``data`` is a JPEG or PNG file; ``format`` is
  ``"<encoding>; <jpeg|png> compressed <target>"``, e.g. ``"rgb8; jpeg compressed bgr8"``,
  ``"bgr8; png compressed bgr8"``, ``"mono8; png compressed "``. The publisher converts colour
  to bgr8 before encoding, so OpenCV's decoder hands the pixels back in the target's order
  (``bgr*`` -> BGR, ``rgb*`` -> RGB). Older publishers wrote just ``"jpeg"`` / ``"png"`` (BGR).
- ``compressedDepth`` (compressed_depth_image_transport): ``format`` is
  ``"<16UC1|32FC1>; compressedDepth png"``; ``data`` is a 12-byte header (int32 format = 0,
  float32 depthQuantA, float32 depthQuantB, little-endian) followed by a 16-bit PNG. 16UC1: the
  raw millimetres. 32FC1: quantised inverse depth, depth = A / (v - B), v = 0 no return.
  (``compressedDepth rvl`` is refused with the reason.)

Decoding checks before it decodes: the format is one of these, the bytes are the file type the
format names, the image size in the file header is sane (no decompression bombs), the file is
complete (JPEG EOI / PNG IEND present: a truncated JPEG otherwise "decodes" with a grey tail),
then that the decoded size matches the header. Every problem raises ``ConversionError`` naming
the field; nothing is produced.
"""
from __future__ import annotations

import struct
from typing import Optional, Tuple

import numpy as np

from .convert import MAX_IMAGE_SIDE, ConversionError, _buffer, header_msg

__all__ = ["parse_format", "file_info", "check_area", "compressed_to_rgb", "compressed_depth_to_array", "encode_rgb",
           "compressed_image_msg", "encode_depth", "compressed_depth_msg", "CODECS", "DEPTH_HEADER_BYTES"]

CODECS = ("jpeg", "png")
DEPTH_HEADER_BYTES = 12
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def _cv2():
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - opencv-python-headless is a core dependency
        raise ConversionError(f"OpenCV is needed for compressed images ({exc})") from None
    return cv2


def parse_format(fmt: str) -> Tuple[Optional[str], str, Optional[str]]:
    """``format`` of a CompressedImage -> (original encoding or None, codec, target encoding or
    None). Codec: ``jpeg``, ``png``, ``compressedDepth png``, ``compressedDepth rvl``, or the
    unknown word itself. ``"rgb8; jpeg compressed bgr8"`` -> ("rgb8", "jpeg", "bgr8")."""
    fmt = str(fmt).strip()
    if ";" not in fmt:  # older plugins: just the codec
        word = fmt.lower()
        return None, {"jpg": "jpeg", "": ""}.get(word, word), None
    enc, rest = (s.strip() for s in fmt.split(";", 1))
    if rest.startswith("compressedDepth"):
        tail = rest[len("compressedDepth"):].strip()
        return enc, f"compressedDepth {tail or 'png'}", None
    parts = rest.split()
    codec = parts[0].lower() if parts else ""
    codec = "jpeg" if codec == "jpg" else codec
    target = parts[2] if len(parts) >= 3 and parts[1] == "compressed" else (None if len(parts) < 2 else "")
    return enc, codec, target


def file_info(data: np.ndarray, field: str) -> Tuple[str, int, int]:
    """(codec, height, width) from a JPEG or PNG file's header; checks the file is complete."""
    b = bytes(data[:64])
    if b.startswith(_PNG_SIG):
        if len(data) < 33 or b[12:16] != b"IHDR":
            raise ConversionError(f"{field}.data: a PNG without its IHDR header")
        W, H = struct.unpack(">II", b[16:24])
        if bytes(data[-12:]) != _PNG_IEND:
            raise ConversionError(f"{field}.data: the PNG is truncated (no IEND chunk at the end)")
        return "png", int(H), int(W)
    if b.startswith(b"\xff\xd8\xff"):
        H = W = None
        i, n = 2, len(data)
        raw = data
        while i + 4 <= n:
            if raw[i] != 0xFF:
                raise ConversionError(f"{field}.data: the JPEG's marker structure is broken at byte {i}")
            m = int(raw[i + 1])
            if m == 0xFF:  # fill byte
                i += 1
                continue
            if m in (0xD8, 0x01) or 0xD0 <= m <= 0xD7:
                i += 2
                continue
            seg = (int(raw[i + 2]) << 8) | int(raw[i + 3])
            if m in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                if i + 9 > n:
                    break
                H = (int(raw[i + 5]) << 8) | int(raw[i + 6])
                W = (int(raw[i + 7]) << 8) | int(raw[i + 8])
                break
            if m == 0xDA:  # start of scan before any frame header
                break
            i += 2 + seg
        if H is None:
            raise ConversionError(f"{field}.data: a JPEG without a frame header (SOF)")
        tail = bytes(data[-64:]).rstrip(b"\x00")
        if not tail.endswith(b"\xff\xd9"):
            raise ConversionError(f"{field}.data: the JPEG is truncated (no end-of-image marker)")
        return "jpeg", int(H), int(W)
    raise ConversionError(f"{field}.data: neither a JPEG nor a PNG file (starts with {b[:8].hex()})")


def check_area(H: int, W: int, field: str, max_pixels: Optional[int] = None,
               expect_size: Optional[Tuple[int, int]] = None, what: str = "image") -> None:
    """Refuse an image size before any pixel is decoded or copied: more than ``max_pixels``
    (height x width; the node's ``input.max_pixels``) or, when ``expect_size`` (the newest
    camera_info's height, width) is known, a different size."""
    if max_pixels is not None and H * W > int(max_pixels):
        raise ConversionError(f"{field}: the {what} is {H} x {W} = {H * W:,} pixels, more than input.max_pixels = "
                              f"{int(max_pixels):,}; refused before decoding")
    if expect_size is not None and (H, W) != tuple(expect_size):
        raise ConversionError(f"{field}: the {what} is {H} x {W} but camera_info says {expect_size[0]} x "
                              f"{expect_size[1]}; refused before decoding")


def _decode(buf: np.ndarray, field: str, expect_codec: Optional[str], max_pixels: Optional[int] = None,
            expect_size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    if buf.size == 0:
        raise ConversionError(f"{field}.data: empty")
    codec, H, W = file_info(buf, field)
    if expect_codec and codec != expect_codec:
        raise ConversionError(f"{field}: format says {expect_codec} but the data is a {codec} file")
    if not (0 < H <= MAX_IMAGE_SIDE and 0 < W <= MAX_IMAGE_SIDE):
        raise ConversionError(f"{field}: the {codec} header says {H} x {W}, not a valid image size "
                              f"(at most {MAX_IMAGE_SIDE} a side)")
    check_area(H, W, field, max_pixels, expect_size, f"{codec} header's size")
    if codec == "jpeg":
        img = _decode_jpeg(buf, field)
    else:
        cv2 = _cv2()
        try:
            img = cv2.imdecode(np.ascontiguousarray(buf), cv2.IMREAD_UNCHANGED)
        except cv2.error as exc:
            raise ConversionError(f"{field}.data: the {codec} does not decode "
                                  f"({' '.join(str(exc).split())[:200]})") from None
        if img is None:
            raise ConversionError(f"{field}.data: the {codec} does not decode (libpng refused it: truncated or "
                                  f"corrupt)")
    if img.shape[:2] != (H, W):
        raise ConversionError(f"{field}.data: decoded {img.shape[0]} x {img.shape[1]}, the header says {H} x {W}")
    return img


def _decode_jpeg(buf: np.ndarray, field: str) -> np.ndarray:
    """A JPEG decoded by libjpeg-turbo (simplejpeg) with ``strict``: any corrupt-data warning
    (a truncated scan with an end marker appended, headers without image data) is an error, where
    OpenCV returns the image with a grey tail. Grey files give (H, W), colour ones BGR (H, W, 3),
    as ``cv2.imdecode`` does (the same pixels: both are libjpeg-turbo, same IDCT and upsampling)."""
    import simplejpeg

    data = np.ascontiguousarray(buf).tobytes()
    try:
        _h, _w, space, _sub = simplejpeg.decode_jpeg_header(data)
        gray = str(space).lower() == "gray"
        img = simplejpeg.decode_jpeg(data, colorspace="GRAY" if gray else "BGR", strict=True)
    except ValueError as exc:
        raise ConversionError(f"{field}.data: the jpeg does not decode without error "
                              f"({' '.join(str(exc).split())[:200]})") from None
    return img[..., 0] if gray else img


def compressed_to_rgb(msg, field: str = "image", max_pixels: Optional[int] = None,
                      expect_size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """A colour CompressedImage (jpeg / png, image_transport's ``compressed``) -> (H, W, 3) uint8 RGB.
    ``max_pixels`` / ``expect_size``: see ``check_area`` (checked on the file header, before decoding)."""
    enc, codec, target = parse_format(getattr(msg, "format", ""))
    if codec not in CODECS and codec != "":
        raise ConversionError(f"{field}.format: {msg.format!r} is not a jpeg or png image (supported: "
                              f"image_transport's "
                              "'compressed' jpeg and png)")
    img = _decode(_buffer(msg.data, f"{field}.data"), field, codec or None, max_pixels, expect_size)
    if img.dtype != np.uint8:
        raise ConversionError(f"{field}: a {img.dtype} {codec or 'image'}; colour input must be 8-bit")
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=2)
    rgb_order = (target or "").startswith("rgb")
    if img.shape[2] == 3:
        return np.ascontiguousarray(img if rgb_order else img[..., ::-1])
    if img.shape[2] == 4:
        return np.ascontiguousarray(img[..., :3] if rgb_order else img[..., 2::-1])
    raise ConversionError(f"{field}: {img.shape[2]} channels")


def compressed_depth_to_array(msg, field: str = "depth", mm_scale: float = 0.001, max_pixels: Optional[int] = None,
                              expect_size: Optional[Tuple[int, int]] = None,
                              max_depth: Optional[float] = None) -> np.ndarray:
    """A ``compressedDepth`` CompressedImage -> (H, W) float32 metres; no return -> NaN (as
    ``convert.image_to_depth``; so is depth beyond ``max_depth``). ``max_pixels`` / ``expect_size``:
    see ``check_area`` (checked on the PNG header, before decoding)."""
    enc, codec, _ = parse_format(getattr(msg, "format", ""))
    if ";" not in str(msg.format):
        enc, codec = None, "compressedDepth png"  # the oldest plugin: png, encoding unknown
    if codec != "compressedDepth png":
        raise ConversionError(f"{field}.format: {msg.format!r} is not image_transport's 'compressedDepth' png "
                              "(rvl and plain compressed images are not depth)")
    if enc not in ("16UC1", "mono16", "32FC1"):
        raise ConversionError(f"{field}.format: depth encoding {enc!r} (expected 16UC1 or 32FC1)")
    buf = _buffer(msg.data, f"{field}.data")
    if buf.size <= DEPTH_HEADER_BYTES:
        raise ConversionError(f"{field}.data: {buf.size} bytes, shorter than the {DEPTH_HEADER_BYTES}-byte "
                              f"compressedDepth header")
    kind, qa, qb = struct.unpack("<iff", bytes(buf[:DEPTH_HEADER_BYTES]))
    if kind != 0:
        raise ConversionError(f"{field}.data: compressedDepth header format {kind} (expected 0, inverse depth)")
    img = _decode(buf[DEPTH_HEADER_BYTES:], field, "png", max_pixels, expect_size)
    if img.dtype != np.uint16 or img.ndim != 2:
        raise ConversionError(f"{field}: the compressedDepth PNG is {img.dtype} with shape {img.shape}, expected "
                              f"16-bit mono")
    if enc == "32FC1":
        if not (np.isfinite(qa) and np.isfinite(qb)):
            raise ConversionError(f"{field}.data: compressedDepth quantisation ({qa}, {qb}) is not finite")
        v = img.astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.float32(qa) / (v - np.float32(qb))
        d[img == 0] = np.nan
    else:
        d = img.astype(np.float32) * np.float32(mm_scale)
    with np.errstate(invalid="ignore"):
        d[~(np.isfinite(d) & (d > 0) & (d <= (np.inf if max_depth is None else max_depth)))] = np.nan
    return d


def encode_rgb(rgb: np.ndarray, codec: str, jpeg_quality: int = 90, png_level: int = 3) -> Tuple[np.ndarray, str]:
    """(H, W, 3) uint8 RGB -> (file bytes as uint8 array, format string) as image_transport's
    ``compressed`` publisher writes an rgb8 image: converted to BGR, then ``cv2.imencode``."""
    cv2 = _cv2()
    a = np.asarray(rgb)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ConversionError(f"image: expected (H, W, 3) uint8 RGB, got {a.dtype} {a.shape}")
    bgr = np.ascontiguousarray(a[..., ::-1])
    if codec == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    elif codec == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, int(png_level)])
    else:
        raise ConversionError(f"codec: {codec!r} is not one of {', '.join(CODECS)}")
    if not ok:
        raise ConversionError(f"image: cv2.imencode ({codec}) failed")
    return buf.reshape(-1), f"rgb8; {codec} compressed bgr8"


def compressed_image_msg(types, rgb: np.ndarray, stamp_ns: int, frame_id: str, codec: str, jpeg_quality: int = 90,
                         png_level: int = 3):
    """sensor_msgs/CompressedImage of an RGB frame (``types``: rclpy or rosbags, see ``convert``)."""
    data, fmt = encode_rgb(rgb, codec, jpeg_quality, png_level)
    return types.CompressedImage(header=header_msg(types, stamp_ns, frame_id), format=fmt, data=types.u8(data))


def encode_depth(depth_m: np.ndarray, encoding: str = "16UC1", depth_max: float = 10.0, quantization: float = 100.0,
                 png_level: int = 1) -> Tuple[np.ndarray, str]:
    """(H, W) metres (NaN / non-positive: no return) -> (bytes as uint8 array, format) as
    compressed_depth_image_transport's ``png`` writes it: the 12-byte header, then a 16-bit PNG.
    16UC1: millimetres (beyond 65.535 m: no return). 32FC1: quantised inverse depth
    v = A / d + B with A = q (q + 1), B = 1 - A / depth_max (the plugin's defaults: depth_max 10 m,
    quantization 100); depths at or beyond depth_max are dropped (0), as the plugin drops them."""
    cv2 = _cv2()
    d = np.asarray(depth_m, dtype=np.float32)
    if d.ndim != 2:
        raise ConversionError(f"depth: expected (H, W) metres, got shape {d.shape}")
    ok_px = np.isfinite(d) & (d > 0)
    if encoding in ("16UC1", "mono16"):
        mm = np.where(ok_px, np.round(d.astype(np.float64) * 1000.0), 0.0)
        v = np.where(mm <= 65535, mm, 0).astype(np.uint16)
        head = struct.pack("<iff", 0, 0.0, 0.0)
    elif encoding == "32FC1":
        qa = np.float32(quantization * (quantization + 1.0))
        qb = np.float32(1.0 - qa / np.float32(depth_max))
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = np.where(ok_px & (d < depth_max), qa / d + qb, 0.0)
        v = np.clip(inv, 0, 65535).astype(np.uint16)
        head = struct.pack("<iff", 0, float(qa), float(qb))
    else:
        raise ConversionError(f"depth encoding {encoding!r}: expected 16UC1 or 32FC1")
    ok, buf = cv2.imencode(".png", v, [cv2.IMWRITE_PNG_COMPRESSION, int(png_level)])
    if not ok:
        raise ConversionError("depth: cv2.imencode (png) failed")
    data = np.concatenate([np.frombuffer(head, np.uint8), buf.reshape(-1)])
    return data, f"{encoding}; compressedDepth png"


def compressed_depth_msg(types, depth_m: np.ndarray, stamp_ns: int, frame_id: str, encoding: str = "16UC1",
                         depth_max: float = 10.0, quantization: float = 100.0):
    """sensor_msgs/CompressedImage (``depth/compressedDepth``) of a depth image in metres."""
    data, fmt = encode_depth(depth_m, encoding, depth_max, quantization)
    return types.CompressedImage(header=header_msg(types, stamp_ns, frame_id), format=fmt, data=types.u8(data))
