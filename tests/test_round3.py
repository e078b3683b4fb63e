"""Hostile input without ROS: parameters, decoding bombs, pairing and tf budgets, forks, codecs,
model configs, bags and training files. docs/NOTES.md ("Hostile input, round 3") lists each attack,
the test that repeats it (test_item<N>_*), the fix and the measured bound."""
import math
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


# -- parameters --------------------------------------------------------------------------------

def test_item3_files_folders_and_the_model_are_fixed_at_launch():
    from mirage_ros.ros.params import PARAMS

    launch = {p.name for p in PARAMS if p.mode == "launch"}
    for name in ("memory.save_dir", "memory.load_path", "weights_dir", "mirage.side_branch", "mirage.lora",
                 "depth.weights", "masks.sam3_dir", "masks.qwen_dir", "backend", "mirage.config", "device"):
        assert name in launch, name
    assert all(p.mode == "launch" for p in PARAMS if p.kind == "path")


def test_item3_every_number_is_bounded_and_nan_inf_are_refused():
    from mirage_ros.ros.params import PARAMS, ParamError, validate

    for p in PARAMS:
        d = p.default
        if isinstance(d, bool) or p.choices or isinstance(d, str):
            continue
        assert p.lo is not None and p.hi is not None, f"{p.name} has no bounds"
        if isinstance(d, list):
            bad = [[math.nan] * len(d), [1e308] * len(d)]
        elif isinstance(d, float):
            bad = [math.nan, math.inf, -math.inf, 1e308, -1e308]
        else:
            bad = [2**62, -(2**62)]
        for v in bad:
            with pytest.raises(ParamError, match=p.name.replace(".", r"\.")):
                validate({p.name: v})
        assert validate({p.name: d})[p.name] == d
    with pytest.raises(ParamError, match="viz.stats_period"):
        validate({"viz.stats_period": float("nan")})
    with pytest.raises(ParamError, match="observe.min_interval"):
        validate({"observe.min_interval": 1e308})
    with pytest.raises(ParamError, match="world_frame"):
        validate({"world_frame": ""})
    with pytest.raises(ParamError, match="pose.base_to_camera"):
        validate({"pose.base_to_camera": [0, 0, 0, 0, 0, 0, 2]})


def test_item3_the_parameter_table_is_generated_from_params():
    from mirage_ros.ros.params import PARAMS, markdown_table

    reference = (ROOT / "docs" / "node.md").read_text()
    assert markdown_table() in reference, ("docs/node.md's parameter table differs from params.markdown_table() "
                                           "(python scripts/gen_docs.py)")
    for p in PARAMS:
        assert f"| `{p.name}` |" in reference


# -- items 1, 2, 11, 12: decompression bombs, huge observations, depth, incomplete JPEGs --------------

H, W = 64, 112
S = 1_000_000_000


@pytest.fixture(scope="module")
def scene(room_loop):
    return room_loop(4, H, W)


def _types():
    from mirage_ros.ros.bag import RosbagsTypes

    return RosbagsTypes()


def _core(**params):
    from mirage_ros.ros.core import MirageCore

    c = MirageCore({"backend": "readout", **params})
    c.configure()
    return c


def _jpeg_bomb(h, w):
    """A baseline JPEG whose frame header says h x w, with quantisation and Huffman tables, a scan
    header and the end marker, but (almost) no image data: a few hundred bytes."""
    import cv2

    ok, buf = cv2.imencode(".jpg", np.zeros((16, 16), np.uint8))
    b = bytearray(buf.tobytes())
    i = b.find(b"\xff\xc0")
    b[i + 5:i + 9] = bytes([h >> 8, h & 255, w >> 8, w & 255])
    sos = b.find(b"\xff\xda")
    seg = (b[sos + 2] << 8) | b[sos + 3]
    return bytes(b[:sos + 2 + seg]) + b"\x00" * 8 + b"\xff\xd9"


def _png_header(h, w, depth16=False):
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", w, h, 16 if depth16 else 8, 0, 0, 0, 0)

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _compressed(data, fmt, stamp=S, frame="cam"):
    from mirage_ros.ros import convert as cv

    B = _types()
    return B.CompressedImage(header=cv.header_msg(B, stamp, frame), format=fmt, data=np.frombuffer(data, np.uint8))


def _rss():
    import psutil

    return psutil.Process().memory_info().rss


def test_item1_decompression_bombs_are_refused_before_decoding(scene):
    """A 335-byte JPEG saying 16384 x 16384 added 768 MiB per message, a grey PNG the
    same, a 16-bit compressedDepth PNG 1 GiB. Refused from the file header, before decoding."""
    import struct

    core = _core(**{"input.image_transport": "compressed", "input.depth_transport": "compressedDepth"})
    bomb = _jpeg_bomb(16384, 16384)
    assert len(bomb) < 1000
    r0 = _rss()
    for k in range(3):
        assert core.intake.on_compressed_image(_compressed(bomb, "rgb8; jpeg compressed bgr8", S + k)) is None
        assert "refused before decoding" in core.last_rejection and "input.max_pixels" in core.last_rejection
        png = _compressed(_png_header(16384, 16384), "mono8; png compressed ", S + k)
        assert core.intake.on_compressed_image(png) is None
        assert "refused before decoding" in core.last_rejection
        depth = struct.pack("<iff", 0, 0.0, 0.0) + _png_header(16384, 16384, depth16=True)
        assert core.intake.on_compressed_depth(_compressed(depth, "16UC1; compressedDepth png", S + k)) is None
        assert "refused before decoding" in core.last_rejection, core.last_rejection
    assert _rss() - r0 < 200 * 2**20  # one decoded bomb alone is 768 MiB
    # once camera_info is known, a file of another size is refused before decoding too
    from mirage_ros.ros import convert as cv

    cam = scene[0][0]
    core.intake.on_camera_info(cv.camera_info_msg(_types(), cam.K.numpy(), H, W, S, "cam"))
    assert core.intake.on_compressed_image(_compressed(_jpeg_bomb(1024, 1024), "rgb8; jpeg compressed bgr8")) is None
    assert "camera_info says 64 x 112" in core.last_rejection and "refused before decoding" in core.last_rejection
    assert core.backend.memory.num_points == 0


def test_item1_the_pairing_queues_are_bounded_in_bytes():
    from mirage_ros.ros.sync import Synchronizer

    s = Synchronizer(("image", "camera_info", "pose"), queue_size=30, max_bytes=10 * 2**20)
    for k in range(30):  # 30 images of 3 MiB, no partner ever comes
        s.add("image", k, np.zeros((1024, 1024, 3), np.uint8))
    assert s.nbytes <= 10 * 2**20 and len(s.queues["image"]) == 3 and s.counts["overflow_bytes"] == 27
    assert [t for t, _ in s.queues["image"]] == [27, 28, 29]  # the oldest went first
    assert s.add("camera_info", 29, (np.eye(3), 1024, 1024)) is None
    got = s.add("pose", 29, np.eye(4))
    assert got is not None and got.stamp_ns == 29 and s.nbytes == sum(
        e[1].nbytes if isinstance(e[1], np.ndarray) else 0 for q in s.queues.values() for e in q)
    from mirage_ros.ros.core import MirageCore

    assert MirageCore({"backend": "readout"}).intake.sync.max_bytes == 512 * 2**20  # the default, documented


def test_item2_a_huge_camera_is_refused_and_goals_are_bounded(scene):
    """A 629-byte JPEG + a small depth image at 8192 x 8192 became the camera, and the next
    2-pose goal peaked +4.8 GiB. camera_info, image, depth and labels are bounded by
    input.max_pixels; a goal's frames by imagined.max_pixels."""
    from mirage_ros import sim
    from mirage_ros.ros import convert as cv
    from mirage_ros.ros.core import GoalError

    B = _types()
    core = _core()
    big = sim.default_camera(8192, 8192)
    assert core.intake.on_camera_info(cv.camera_info_msg(B, big.K.numpy(), 8192, 8192, S, "cam")) is None
    assert "input.max_pixels" in core.last_rejection and core.intake.camera_size is None
    d = B.Image(header=cv.header_msg(B, S, "cam"), height=8192, width=8192, encoding="32FC1", is_bigendian=0,
                step=8192 * 4, data=np.zeros(16, np.uint8))
    assert core.intake.on_depth(d) is None and "input.max_pixels" in core.last_rejection
    # a camera inside input.max_pixels but beyond imagined.max_pixels: observed, goals refused
    cams, frames = scene
    core = _core(**{"imagined.max_pixels": H * W - 1})
    msgs = {"camera_info": cv.camera_info_msg(B, cams[0].K.numpy(), H, W, S, "cam"),
            "pose": cv.pose_stamped_msg(B, cams[0].camera_to_world.numpy(), S, "map"),
            "depth": cv.image_msg(B, frames[0].depth, S, "cam", "32FC1"),
            "image": cv.image_msg(B, frames[0].rgb, S, "cam")}
    s = None
    for k in ("camera_info", "pose", "depth", "image"):
        s = getattr(core.intake, f"on_{k}")(msgs[k]) or s
    assert core.observe(s) > 0
    path = cv.path_msg(B, np.stack([c.camera_to_world.numpy() for c in cams[:2]]), [S, 2 * S], "map")
    with pytest.raises(GoalError, match="imagined.max_pixels"):
        core.prepare(path)


def test_item11_depth_beyond_depth_max_is_no_return(scene):
    """1e30 .. 3.4e37 m depth (raw, or 3e38 m through compressedDepth quantisation)
    entered the memory though poses are bounded at 1e5 m."""
    import struct

    from mirage_ros.ros import convert as cv
    from mirage_ros.ros.compressed import compressed_depth_to_array, encode_depth

    B = _types()
    core = _core()
    core.intake.on_depth(cv.image_msg(B, np.full((H, W), 3.4e37, np.float32), S, "cam", "32FC1"))
    assert core.intake.sync.queues["depth"] and np.isnan(core.intake.sync.queues["depth"][-1][1]).all()
    assert core.p["depth.max"] == 1000.0
    d = np.full((H, W), 1e30, np.float32)
    d[0, 0] = 2.0
    out = cv.image_to_depth(cv.image_msg(B, d, S, "cam", "32FC1"), "depth", max_depth=1000.0)
    assert np.isnan(out).sum() == H * W - 1 and out[0, 0] == 2.0
    # compressedDepth 32FC1: depth = A / (v - B) with a hostile A reaches 3e38 m
    data, fmt = encode_depth(np.full((H, W), 5.0, np.float32), "32FC1")
    data = data.copy()
    data[4:8] = np.frombuffer(struct.pack("<f", 3e38), np.uint8)
    msg = B.CompressedImage(header=cv.header_msg(B, S, "cam"), format=fmt, data=data)
    assert np.isfinite(compressed_depth_to_array(msg, "depth")).any()  # what the old path let through
    assert np.isnan(compressed_depth_to_array(msg, "depth", max_depth=1000.0)).all()


def test_item12_incomplete_jpegs_are_refused():
    """A truncated JPEG with an end marker appended, or headers only + end marker, was
    accepted (grey pixels entered the memory). Complete now means decodable without error."""
    import cv2

    from mirage_ros.ros.compressed import compressed_to_rgb
    from mirage_ros.ros.convert import ConversionError

    rng = np.random.default_rng(0)
    img = (rng.random((H, W, 3)) * 255).astype(np.uint8)
    full = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    sos = full.find(b"\xff\xda")
    ok = compressed_to_rgb(_compressed(full, "bgr8; jpeg compressed bgr8"))
    assert np.array_equal(ok, cv2.imdecode(np.frombuffer(full, np.uint8), cv2.IMREAD_COLOR)[..., ::-1])
    truncated = [full[:len(full) // 2] + b"\xff\xd9", full[:-40] + b"\xff\xd9", full[:sos + 14] + b"\xff\xd9"]
    for bad in truncated:  # OpenCV alone returns these, with a grey tail
        assert cv2.imdecode(np.frombuffer(bad, np.uint8), cv2.IMREAD_COLOR) is not None
    for bad in truncated + [_jpeg_bomb(H, W)]:
        with pytest.raises(ConversionError, match="does not decode"):
            compressed_to_rgb(_compressed(bad, "bgr8; jpeg compressed bgr8"))


# -- point colours of a large memory -----------------------------------------------------------

def test_item4_mean_rgb_never_materialises_n_x_768(monkeypatch):
    """LinearBlockCodec.mean_rgb built an N x 768 float32 array (a 1M-point memory: +6.2 GiB
    peak, the memory lock held 20 s). The block mean of a linear decode is linear in the latent."""
    import torch

    from mirage_ros.world_model import codec as C
    from mirage_ros.world_model.backend import pca_colors

    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(768, 48, generator=g, dtype=torch.float64))
    codec = C.LinearBlockCodec(q.T.float(), torch.rand(768, generator=g), 0.3)
    feats = torch.randn(5000, 48, generator=g).to(torch.bfloat16)
    # the reference: decode each cell and average its pixels (float64, unclamped, then clamped)
    blocks = feats.double() @ codec.basis.double() * codec.scale + codec.mean.double()
    ref = blocks.view(-1, 3, 256).mean(-1).clamp(0, 1)
    monkeypatch.setattr(C, "MEAN_RGB_ROWS", 1024)
    seen = []
    real_mm = torch.Tensor.__matmul__

    def watch(a, b):  # no N x 768 product any more
        seen.append((a.shape[0], b.shape[-1]))
        return real_mm(a, b)

    monkeypatch.setattr(torch.Tensor, "__matmul__", watch)
    got = codec.mean_rgb(feats)
    monkeypatch.undo()
    assert got.shape == (5000, 3) and float((got.double() - ref).abs().max()) < 1e-5
    assert all(cols != 768 for _, cols in seen)
    thumb = C.ThumbnailCodec()
    t = torch.rand(3000, 48, generator=g) * 2 - 1
    assert torch.allclose(thumb.mean_rgb(t), ((t + 1) / 2).view(-1, 3, 16).mean(-1).clamp(0, 1), atol=1e-6)
    p = pca_colors(t)
    assert p.shape == (3000, 3) and float(p.min()) >= 0 and float(p.max()) <= 1


# -- forks share the snapshot ---------------------------------------------------------------

def _reads(mem, cams):
    return [mem.read(c) for c in cams]


def _same(a, b):
    import torch

    return all(torch.equal(x.latent, y.latent) and torch.equal(x.mask, y.mask) and torch.equal(x.index, y.index)
               for x, y in zip(a, b))


@pytest.mark.parametrize("on_revisit", ["keep", "refresh"])
def test_item6_forks_share_the_memory_and_never_touch_it(scene, on_revisit):
    """imagine_candidates copied the whole memory K+1 times (K=16: +1.8 GiB on a 103 MiB
    memory). A fork now shares the snapshot's rows; what it inserts is its own (copy on write)."""
    import copy

    import torch

    from mirage_ros.memory import LatentSpatialMemory

    cams, frames = scene
    torch.manual_seed(0)
    mem = LatentSpatialMemory(channels=8, stride=16, feature_dtype=torch.float32, on_revisit=on_revisit)
    lat = [torch.randn(8, H // 16, W // 16) for _ in cams]
    mem.insert(lat[0], frames[0].depth, cams[0])
    mem.insert(lat[1], frames[1].depth, cams[1])
    ref = copy.deepcopy(mem)  # what the memory holds before any fork
    before = _reads(mem, cams)
    forks = [mem.fork() for _ in range(16)]
    assert all(f._xyz.base.data_ptr() == mem._xyz.data_ptr() for f in forks)  # shared, not copied
    assert _same(_reads(forks[0], cams), before)
    # a fork's inserts and refreshes stay in the fork
    forks[0].insert(lat[2] + 1, frames[2].depth, cams[2])
    forks[0].insert(lat[1] + 5, frames[1].depth, cams[1])  # a revisit: refresh writes a shared row
    assert forks[0].num_points > mem.num_points
    assert _same(_reads(mem, cams), before) and _same(_reads(forks[1], cams), before)
    assert torch.equal(mem.features, ref.features) and torch.equal(mem.points, ref.points)
    solo = copy.deepcopy(ref)
    solo.insert(lat[2] + 1, frames[2].depth, cams[2])
    solo.insert(lat[1] + 5, frames[1].depth, cams[1])
    assert _same(_reads(forks[0], cams), _reads(solo, cams))  # the fork behaves as a private copy
    # the live memory goes on (new points, a refresh): the forks keep their snapshot
    mem.insert(lat[3], frames[3].depth, cams[3])
    mem.insert(lat[0] - 3, frames[0].depth, cams[0])
    assert _same(_reads(forks[1], cams), before)
    assert torch.equal(forks[1].features, ref.features)
    # a fork of a fork
    ff = forks[0].fork()
    assert _same(_reads(ff, cams), _reads(solo, cams))
    ff.insert(lat[3], frames[3].depth, cams[3])
    assert _same(_reads(forks[0], cams), _reads(solo, cams))
    ff.clear()
    assert ff.num_points == 0 and forks[0].num_points == solo.num_points


def test_item6_the_rgb_cache_forks_too(scene):
    import torch

    from mirage_ros.baselines.rgb_memory import RGBPointCloudMemory
    from mirage_ros.world_model.codec import ThumbnailCodec

    cams, frames = scene
    mem = RGBPointCloudMemory(ThumbnailCodec())
    mem.insert(frames[0].rgb, frames[0].depth, cams[0])
    before = mem.read(cams[1]).latent.clone()
    f = mem.fork()
    f.insert(frames[2].rgb, frames[2].depth, cams[2])
    assert f.num_points > mem.num_points and torch.equal(mem.read(cams[1]).latent, before)
    assert f.pitch.shape[0] == f.num_points and mem.pitch.shape[0] == mem.num_points


# -- items 5 and 14: the tf buffer's budget and depth ---------------------------------------------------

def test_item14_a_loop_longer_than_max_depth_is_refused():
    from mirage_ros.ros.tf_buffer import MAX_DEPTH, TfInputError, TransformBuffer

    b = TransformBuffer(max_frames=5000)
    T = np.eye(4)
    for i in range(1, MAX_DEPTH + 5):  # f0 <- f1 <- ... a chain, one edge at a time
        try:
            b.set_transform(f"f{i - 1}", f"f{i}", 0, T, static=True)
        except TfInputError as exc:
            assert "deeper than" in str(exc) and i >= MAX_DEPTH - 1
            break
    else:
        pytest.fail("a chain deeper than MAX_DEPTH was accepted")
    deepest = max(int(c[1:]) for c in b.edges)
    with pytest.raises(TfInputError, match="loop|deeper"):  # closing the loop f_deepest -> f0
        b.set_transform(f"f{deepest}", "f0", 0, T, static=True)
    assert "f0" not in b.edges
    # a 3-frame loop still says "loop"
    with pytest.raises(TfInputError, match="loop"):
        b.set_transform("f2", "f0", 0, T, static=True)


def test_item5_junk_frames_cannot_lock_the_camera_out_and_the_budget_holds():
    """10,100 junk frames locked the real camera frame out for good; the limits allowed
    ~49 GiB. Now least recently updated / used frames go first, within tf.max_bytes."""
    from mirage_ros.ros.tf_buffer import FRAME_BYTES, SAMPLE_BYTES, TransformBuffer

    b = TransformBuffer(max_bytes=8 << 20)  # the node's default is 64 MiB (tf.max_bytes)
    T = np.eye(4)
    b.set_transform("base_link", "camera", 0, T, static=True)  # /tf_static, once
    for t in range(3):
        b.set_transform("map", "base_link", t * S, T)
    for i in range(10100):
        b.set_transform("map", f"junk{i}", S, T)
        if i % 500 == 0:
            b.lookup("map", "camera", S)  # the camera chain is in use (images keep arriving)
    b.set_transform("map", "base_link", 3 * S, T)
    assert b.lookup("map", "camera", 3 * S) is not None  # static camera mount kept, chain intact
    b.set_transform("map", "new_camera", 3 * S, T)  # a frame first seen now still gets in
    assert "new_camera" in b.edges and len(b.edges) <= b.max_frames
    for k in range(200000):  # a flood of samples on junk edges: the estimate stays within budget
        b.set_transform("map", f"j{k % 50}", 10 * S + k, T)
    assert b.nbytes <= 8 << 20 and b.counts["evicted"] > 0
    assert b.nbytes == len(b.edges) * FRAME_BYTES + sum(len(e.stamps) for e in b.edges.values()) * SAMPLE_BYTES


@pytest.mark.slow
def test_item5_huge_tf_messages_are_refused_before_work():
    from mirage_ros.ros import outputs as out
    from mirage_ros.ros.tf_buffer import MAX_MESSAGE_TRANSFORMS, TfQueue, transforms_from_msg

    B = _types()
    tr = [out.transform_stamped_msg(B, np.eye(4), S, "map", f"f{i}") for i in range(MAX_MESSAGE_TRANSFORMS + 1)]
    good, bad = transforms_from_msg(out.tf_msg(B, tr))
    assert good == [] and "refused whole" in bad[0]
    q = TfQueue(max_bytes=1000, max_message_bytes=600)
    q.put(b"x" * 700, False)  # one message too big: dropped before anything deserialises it
    for _ in range(5):
        q.put(b"y" * 300, False)
    assert q.dropped == 3  # the big one, then the two oldest of five beyond 1000 bytes
    assert [q.get(0) for _ in range(4)] == [(b"y" * 300, False)] * 3 + [None]


# -- items 8 and 15: several robots -------------------------------------------------------------------

def test_item8_each_namespace_has_its_own_save_folder_by_default(tmp_path, monkeypatch, scene):
    """/robot2/load_memory robot1_map.safetensors loaded robot1's map, and a robot2 save
    with overwrite replaced robot1's file (one shared default folder)."""
    from mirage_ros.ros import convert as cv
    from mirage_ros.ros.core import MirageCore

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    B = _types()
    cams, frames = scene
    robots = {}
    for ns in ("/robot1", "/robot2"):
        c = MirageCore({"backend": "readout"}, namespace=ns)
        c.configure()
        robots[ns] = c
    c1 = robots["/robot1"]
    s = None
    for k, m in (("camera_info", cv.camera_info_msg(B, cams[0].K.numpy(), H, W, S, "cam")),
                 ("pose", cv.pose_stamped_msg(B, cams[0].camera_to_world.numpy(), S, "map")),
                 ("depth", cv.image_msg(B, frames[0].depth, S, "cam", "32FC1")),
                 ("image", cv.image_msg(B, frames[0].rgb, S, "cam"))):
        s = getattr(c1.intake, f"on_{k}")(m) or s
    c1.observe(s)
    path1, n1 = c1.save("robot1_map.safetensors")
    assert Path(path1) == tmp_path / "mirage_ros" / "memories" / "robot1" / "robot1_map.safetensors" and n1 > 0
    c2 = robots["/robot2"]
    with pytest.raises(ValueError, match="does not exist"):
        c2.load("robot1_map.safetensors")
    with pytest.raises(ValueError, match="outside memory.save_dir"):
        c2.load(path1)
    path2, _ = c2.save("robot1_map.safetensors", overwrite=True)
    assert Path(path2).parent.name == "robot2" and c1.load("robot1_map.safetensors") == n1
    # an explicit folder may name the namespace too
    c3 = MirageCore({"backend": "readout", "memory.save_dir": str(tmp_path / "maps" / "{namespace}")},
                    namespace="/robot3")
    c3.configure()
    assert Path(c3.save("")[0]).parent == tmp_path / "maps" / "robot3"


def test_item15_robots_sharing_tf_keep_to_their_own_frames(scene):
    """With pose.source tf both robots subscribe the absolute /tf and published the same
    imagined frame id. With frame prefixes (robot_state_publisher's frame_prefix; mirage_multi_node's
    default '<robot>/') each robot finds its own camera and publishes its own imagined frame."""
    from mirage_ros.ros import convert as cv
    from mirage_ros.ros import outputs as out
    from mirage_ros.ros.core import MirageCore

    B = _types()
    cams, frames = scene
    cores = {}
    for name, pre in (("robot1", "robot1/"), ("robot2", "robot2/")):
        c = MirageCore({"backend": "readout", "pose.source": "tf", "tf.wait": 0.0}, frame_prefix=pre)
        c.configure()
        cores[name] = c
    assert cores["robot1"].imagined_frame == "robot1/mirage_imagined_optical_frame"
    assert cores["robot2"].imagined_frame == "robot2/mirage_imagined_optical_frame"
    # one /tf stream, as both robots receive it: each robot's camera at its own pose
    tf = out.tf_msg(B, [out.transform_stamped_msg(B, cams[0].camera_to_world.numpy(), S, "map",
                                                  "robot1/camera_optical_frame"),
                        out.transform_stamped_msg(B, cams[2].camera_to_world.numpy(), S, "map",
                                                  "robot2/camera_optical_frame"),
                        out.transform_stamped_msg(B, np.eye(4), S, "map", "robot1/mirage_imagined_optical_frame")])
    for c in cores.values():
        c.intake.on_tf(tf, static=False, now_ns=0)
    assert "robot1/mirage_imagined_optical_frame" not in cores["robot1"].intake.tf_buffer.edges  # its own output
    for name, cam, fr in (("robot1", cams[0], frames[0]), ("robot2", cams[2], frames[2])):
        c = cores[name]
        c.intake.on_camera_info(cv.camera_info_msg(B, cam.K.numpy(), H, W, S, "camera_optical_frame"))
        c.intake.on_depth(cv.image_msg(B, fr.depth, S, "camera_optical_frame", "32FC1"))
        s = c.intake.on_image(cv.image_msg(B, fr.rgb, S, "camera_optical_frame"), now_ns=0)
        assert s is not None, c.last_rejection
        assert np.allclose(s["pose"], cam.camera_to_world.numpy())  # its own camera, not the other's


# -- absurd model configs ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    import torch

    from mirage_ros.world_model.model import MirageWorldModel

    folder = tmp_path_factory.mktemp("tiny_model") / "model"
    m = MirageWorldModel.build("tiny", device="cpu", dtype=torch.float32)
    m.save_pretrained(folder, extra={"resolution": [64, 112]})
    return folder


def _edited(tiny_folder, tmp_path, rel, **changes):
    import json
    import shutil

    dst = tmp_path / "edited"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(tiny_folder, dst)
    f = dst / rel
    cfg = json.loads(f.read_text())
    for k, v in changes.items():
        cur = cfg
        parts = k.split("__")
        for p in parts[:-1]:
            cur = cur[p]
        cur[parts[-1]] = v
    f.write_text(json.dumps(cfg))
    return dst, f


@pytest.mark.parametrize("rel,changes,field", [
    ("transformer/backbone/config.json", {"ffn_dim": 10**9}, "ffn_dim"),
    ("transformer/backbone/config.json", {"num_attention_heads": 10**9}, "num_attention_heads"),
    ("transformer/backbone/config.json", {"attention_head_dim": 10**9}, "attention_head_dim"),
    ("transformer/backbone/config.json", {"rope_max_seq_len": 10**9}, "rope_max_seq_len"),
    ("transformer/backbone/config.json", {"rope_max_seq_len": 3 * 10**6}, "rope_max_seq_len"),
    ("transformer/side_branch/config.json", {"ffn_dim": 10**9}, "ffn_dim"),
    ("model_index.json", {"sampler__steps": 10**9}, "sampler.steps"),
    ("model_index.json", {"text__max_length": 10**9}, "text.max_length"),
    ("model_index.json", {"resolution": [16384, 16384]}, "resolution"),
    ("model_index.json", {"resolution": [0, 0]}, "resolution"),
    ("model_index.json", {"version": "abc"}, "version"),
    ("model_index.json", {"transformer": "../../elsewhere"}, "transformer"),
    ("codec/config.json", {"stride": 10**6}, "stride"),
])
def test_item9_absurd_model_configs_name_the_file_and_field(tiny_folder, tmp_path, rel, changes, field):
    """ffn_dim / heads / head_dim / rope_max_seq_len 1e9 failed with "can't allocate 1 TB"
    naming no file; rope 3e6 loaded with +2.9 GiB; sampler.steps / text max_length 1e9 and
    resolution [16384, 16384] or [0, 0] loaded and then every goal failed; version "abc" a bare
    ValueError."""
    from mirage_ros.world_model.model import MirageWorldModel

    folder, f = _edited(tiny_folder, tmp_path, rel, **changes)
    r0 = _rss()
    with pytest.raises(ValueError) as err:
        MirageWorldModel.from_pretrained(folder, device="cpu")
    msg = str(err.value)
    assert str(f) in msg and f"field {field}" in msg, msg
    assert _rss() - r0 < 500 * 2**20


def test_item9_the_shipped_model_and_a_saved_folder_still_load(tiny_folder):
    from mirage_ros.world_model.backend import SHIPPED_MODEL
    from mirage_ros.world_model.config_check import check_config
    from mirage_ros.world_model.model import MirageWorldModel

    assert MirageWorldModel.from_pretrained(tiny_folder, device="cpu").resolution == (64, 112)
    import json

    for rel, kind in (("model_index.json", "model_index"), ("transformer/backbone/config.json", "backbone"),
                      ("transformer/side_branch/config.json", "side_branch"), ("codec/config.json", "codec")):
        check_config(kind, json.loads((SHIPPED_MODEL / rel).read_text()), SHIPPED_MODEL / rel)


# -- mirage data bag runs the node's checks --------------------------------------------------

def _bag(path, scene, n=4, K_size=None, depth_fill=None, big=None):
    from mirage_ros.ros.bag import BagWriter

    cams, frames = scene
    with BagWriter(path) as bag:
        for i in range(n):
            t = S + i * 10**8
            Hk, Wk = K_size or (H, W)
            K = cams[i].K.numpy().copy()
            if big is not None:
                rgb, depth, (Hk, Wk) = np.zeros((big, big, 3), np.uint8), np.ones((big, big), np.float32), (big, big)
                K[0, 2], K[1, 2] = big / 2, big / 2
            else:
                rgb = frames[i].rgb
                depth = frames[i].depth if depth_fill is None else np.full((H, W), depth_fill, np.float32)
            bag.add_camera_info("/camera_info", K, Hk, Wk, t, "cam")
            bag.add_pose("/pose", cams[i].camera_to_world.numpy(), t)
            bag.add_depth("/depth", depth, t, "cam")
            bag.add_image("/image", rgb, t, "cam")
    return path


def _data_bag(bag, out, *extra, frames=2):
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "mirage_ros", "data", "bag", str(bag), "--out", str(out), "--frames",
                           str(frames),
                           *extra], capture_output=True, text=True, timeout=600, cwd=str(ROOT), env=env)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["wrong_K", "nan_depth", "huge"])
def test_item7_data_bag_refuses_what_the_node_refuses_and_leaves_nothing(tmp_path, scene, kind):
    """camera_info 256x448 over 128x224 images gave exit 0 and a dataset with the wrong K;
    all-NaN depth exit 0; ten 8192^2 frames peaked 9.7 GiB, a traceback and a partial dataset."""
    bag = _bag(tmp_path / "in", scene, **{"wrong_K": {"K_size": (2 * H, 2 * W)}, "nan_depth": {"depth_fill": np.nan},
                                          "huge": {"big": 4096, "n": 2}}[kind])
    r = _data_bag(bag, tmp_path / "out")
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("mirage data: ") and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert {"wrong_K": "camera_info says", "nan_depth": "no valid depth",
            "huge": "input.max_pixels"}[kind] in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_item7_data_bag_streams_a_good_bag(tmp_path, room_loop):
    from mirage_ros.training.dataset import MirageDataset

    bag = _bag(tmp_path / "in", room_loop(12, H, W), n=12)
    r = _data_bag(bag, tmp_path / "out", "--clip-stride", "3", frames=9)
    assert r.returncode == 0, r.stderr[-3000:]
    d = MirageDataset(tmp_path / "out")
    assert d.header["paired_frames"] == 12 and d.header["counts"]["clips"] == 2  # clips at frames 0 and 3


# -- one-line errors, nothing left behind --------------------------------------------------

def _replay_cli(*args):
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "mirage_ros", "replay", *map(str, args), "--quiet", "-p",
                           "backend=readout"],
                          capture_output=True, text=True, timeout=300, cwd=str(ROOT), env=env)


@pytest.mark.slow
def test_item13_replay_config_and_param_errors_are_one_line(tmp_path, scene):
    bag = _bag(tmp_path / "in", scene)
    (tmp_path / "bad.yaml").write_text("/**: {ros__parameters: {a: [1,\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    for args, needle in [(["--config", tmp_path], "cannot be read"),
                         (["--config", tmp_path / "bad.yaml"], "not valid YAML"),
                         (["--config", tmp_path / "list.yaml"], "holds a YAML list"),
                         (["-p", "x=[1,"], "not valid YAML")]:
        r = _replay_cli(bag, "--out", tmp_path / "out", *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        err = r.stderr.strip()
        assert err.startswith("mirage replay: ") and needle in err and len(err.splitlines()) == 1, r.stderr
    assert not (tmp_path / "out").exists()


def _enospc(*_a, **_k):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


def test_item13_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, scene, monkeypatch, capsys):
    import argparse

    from mirage_ros.ros import bag as bagmod
    from mirage_ros.ros import replay
    from mirage_ros.training import cli as tcli
    from mirage_ros.training import dataset as dsmod

    bag = _bag(tmp_path / "in", scene)
    p = argparse.ArgumentParser()
    replay.add_arguments(p)
    args = p.parse_args([str(bag), "--out", str(tmp_path / "out"), "-p", "backend=readout", "--quiet"])
    monkeypatch.setattr(bagmod.BagWriter, "add_cloud", _enospc)
    assert replay.run(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("mirage replay: No space left on device") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists() and sorted(q.name for q in tmp_path.iterdir()) == ["in"]
    # mirage data bag
    monkeypatch.setattr(dsmod.DatasetWriter, "add_clip", _enospc)
    p = argparse.ArgumentParser()
    tcli.add_data_arguments(p)
    dargs = p.parse_args(["bag", str(_bag(tmp_path / "in12", scene, n=4)), "--out", str(tmp_path / "ds"), "--frames",
                          "2"])
    monkeypatch.setattr("mirage_ros.training.bag_data.build_clip", lambda *a, **k: ([], [], {}))
    assert tcli.run_data(dargs) == 2
    err = capsys.readouterr().err
    assert "mirage data: No space left on device" in err and "Traceback" not in err, err
    assert not (tmp_path / "ds").exists()


def test_item13_a_failed_checkpoint_save_leaves_no_tmp_folder(tmp_path, monkeypatch):
    import torch

    from mirage_ros.training import checkpoint as ck

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    calls = {"n": 0}
    real = ck._save

    def flaky(tensors, path, meta=None):
        calls["n"] += 1
        if calls["n"] == 2:
            _enospc()
        return real(tensors, path, meta)

    monkeypatch.setattr(ck, "_save", flaky)
    with pytest.raises(OSError):
        ck.save_checkpoint(tmp_path, 5, model, opt, sched, {"a": 1})
    assert list((tmp_path / "checkpoints").iterdir()) == []


def _saved_run(tmp_path):
    import torch

    from mirage_ros.training import checkpoint as ck

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched.step()
    path = ck.save_checkpoint(tmp_path, 1, model, opt, sched, {"a": 1})
    return path, model, opt, sched


@pytest.mark.parametrize("how", ["state_list", "no_scheduler", "step_abc", "lr_string", "opt_shape", "rng_bad"])
def test_item13_train_resume_refuses_corrupt_checkpoints_before_changing_anything(tmp_path, how):
    import json

    import torch
    from safetensors.torch import load_file, save_file

    from mirage_ros.training import checkpoint as ck

    path, _, _, _ = _saved_run(tmp_path)
    sp = path / "state.json"
    state = json.loads(sp.read_text())
    if how == "state_list":
        sp.write_text("[1, 2]")
    elif how == "no_scheduler":
        del state["scheduler"]
        sp.write_text(json.dumps(state))
    elif how == "step_abc":
        state["step"] = "abc"
        sp.write_text(json.dumps(state))
    elif how == "lr_string":
        state["optimizer"]["param_groups"][0]["lr"] = "fast"
        sp.write_text(json.dumps(state))
    elif how == "opt_shape":
        t = load_file(str(path / "optimizer.safetensors"))
        t["weight::exp_avg"] = torch.zeros(7)
        save_file(t, str(path / "optimizer.safetensors"))
    else:
        save_file({"torch_cpu": torch.zeros(16, dtype=torch.uint8)}, str(path / "rng.safetensors"))
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    before = [p.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    with pytest.raises(ck.TrainCheckpointError) as err:
        ck.load_checkpoint(path, model, opt, sched, {"a": 1})
    assert str(path) in str(err.value)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())) and opt.state_dict()["state"] == {}
    assert torch.equal(rng, torch.get_rng_state()) and sched.last_epoch == 0


def test_item13_resume_with_run_json_a_list_is_one_clear_error(tmp_path):
    from types import SimpleNamespace

    from mirage_ros.training.trainer import Trainer, TrainError

    (tmp_path / "run.json").write_text("[1, 2]")
    stub = SimpleNamespace(run=tmp_path, cfg=SimpleNamespace(fingerprint=lambda: {"a": 1}))
    with pytest.raises(TrainError, match="run.json is corrupt"):
        Trainer._check_run_folder(stub, True)


def test_client_qos_a_planner_should_use():
    """Client side: a planner on rclpy's default action-client depth (10) lost 3 of 30 goal replies
    and 22 of 100 cancel replies in bursts. The README's advice and the probe use this."""
    pytest.importorskip("rclpy")
    from rclpy.qos import ReliabilityPolicy

    from mirage_ros.ros import qos

    kw = qos.action_client_qos()
    assert set(kw) == {"goal_service_qos_profile", "result_service_qos_profile", "cancel_service_qos_profile"}
    assert all(q.depth == 1000 and q.reliability == ReliabilityPolicy.RELIABLE for q in kw.values())
    assert "qos.action_client_qos()" in (ROOT / "README.md").read_text()
