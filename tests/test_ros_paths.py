"""save_memory / load_memory confinement, without ROS: mirage_ros.ros.paths
and MirageCore.save / load."""
import os
from pathlib import Path

import pytest

from mirage_ros.ros import convert as cv
from mirage_ros.ros import paths
from mirage_ros.ros.bag import RosbagsTypes
from mirage_ros.ros.core import MirageCore

B = RosbagsTypes()
H, W = 64, 112


@pytest.fixture
def base(tmp_path):
    d = tmp_path / "memories"
    d.mkdir()
    return paths.memory_dir(str(d))


@pytest.mark.parametrize("requested,needle", [
    ("../escape.safetensors", "contains '..'"),
    ("sub/../../escape.safetensors", "contains '..'"),
    ("~/m.safetensors", "not expanded"),
    ("~root/m.safetensors", "not expanded"),
    ("/etc/m.safetensors", "outside memory.save_dir"),
    ("/tmp/m.safetensors", "outside memory.save_dir"),
    ("m.txt", "ends in .safetensors"),
    (".safetensors", "ends in .safetensors"),
    ("nosuchdir/m.safetensors", "does not exist"),
    ("a\x00b.safetensors", "NUL"),
])
def test_save_paths_outside_the_folder_are_refused(base, requested, needle):
    with pytest.raises(paths.PathError, match=needle.replace(".", r"\.")):
        paths.resolve_save(base, requested)


def test_save_paths_inside_the_folder(base):
    assert paths.resolve_save(base, "m.safetensors") == base / "m.safetensors"
    assert paths.resolve_save(base, str(base / "m.safetensors")) == base / "m.safetensors"
    (base / "sub").mkdir()
    assert paths.resolve_save(base, "sub/m.safetensors") == base / "sub" / "m.safetensors"
    auto = {paths.resolve_save(base, "") for _ in range(1000)}  # unique names, even within a second
    assert len(auto) == 1000 and all(p.parent == base and p.name.endswith(".safetensors") for p in auto)
    assert all(p.is_absolute() for p in auto)


def test_existing_files_folders_and_symlinks(base, tmp_path):
    (base / "old.safetensors").write_bytes(b"x")
    with pytest.raises(paths.PathError, match="exists \\(set overwrite"):
        paths.resolve_save(base, "old.safetensors")
    assert paths.resolve_save(base, "old.safetensors", overwrite=True) == base / "old.safetensors"
    (base / "dir.safetensors").mkdir()
    for ow in (False, True):
        with pytest.raises(paths.PathError, match="is a folder"):
            paths.resolve_save(base, "dir.safetensors", overwrite=ow)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.safetensors").write_bytes(b"precious")
    os.symlink(outside, base / "link")  # a symlinked folder leading out
    with pytest.raises(paths.PathError, match="through a symlink"):
        paths.resolve_save(base, "link/victim.safetensors", overwrite=True)
    with pytest.raises(paths.PathError, match="through a symlink"):
        paths.resolve_load(base, "link/victim.safetensors")
    os.symlink(outside / "victim.safetensors", base / "file.safetensors")  # a symlinked file leading out
    with pytest.raises(paths.PathError, match="symlink"):
        paths.resolve_save(base, "file.safetensors", overwrite=True)
    with pytest.raises(paths.PathError, match="through a symlink"):
        paths.resolve_load(base, "file.safetensors")
    assert (outside / "victim.safetensors").read_bytes() == b"precious"
    with pytest.raises(paths.PathError, match="is a folder"):
        paths.resolve_load(base, "dir.safetensors")
    with pytest.raises(paths.PathError, match="does not exist"):
        paths.resolve_load(base, "none.safetensors")
    with pytest.raises(paths.PathError, match="outside"):
        paths.resolve_load(base, "/dev/zero")


def test_write_atomic_leaves_nothing_behind(base):
    target = base / "m.safetensors"
    paths.write_atomic(target, lambda p: Path(p).write_bytes(b"one"))
    assert target.read_bytes() == b"one"
    with pytest.raises(paths.PathError, match="exists"):
        paths.write_atomic(target, lambda p: Path(p).write_bytes(b"two"))
    assert target.read_bytes() == b"one"
    paths.write_atomic(target, lambda p: Path(p).write_bytes(b"three"), overwrite=True)
    assert target.read_bytes() == b"three"

    def fail(p):
        Path(str(p) + ".tmp").write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        paths.write_atomic(base / "n.safetensors", fail)
    assert sorted(f.name for f in base.iterdir()) == ["m.safetensors"]


def test_default_folder_is_the_users_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    d = paths.memory_dir("")
    assert d == (tmp_path / "xdg" / "mirage_ros" / "memories").resolve() and d.is_dir()
    assert (d.stat().st_mode & 0o777) == 0o700


def test_core_save_and_load_are_confined(tmp_path, room_loop):
    cams, frames = room_loop(2, H, W)
    folder = tmp_path / "mem"
    core = MirageCore({"backend": "readout", "memory.save_dir": str(folder)})
    core.configure()
    t = 10**9
    for kind, m in (("camera_info", cv.camera_info_msg(B, cams[0].K.numpy(), H, W, t, "c")),
                    ("pose", cv.pose_stamped_msg(B, cams[0].camera_to_world.numpy(), t, "map")),
                    ("depth", cv.image_msg(B, frames[0].depth, t, "c", "32FC1")),
                    ("image", cv.image_msg(B, frames[0].rgb, t, "c"))):
        s = getattr(core.intake, f"on_{kind}")(m)
    core.observe(s)
    n = core.backend.memory.num_points
    p1, k1 = core.save("")
    p2, _ = core.save("")
    assert p1 != p2 and Path(p1).is_absolute() and Path(p1).parent == folder.resolve() and k1 == n
    path, _ = core.save("named.safetensors")
    assert path == str(folder.resolve() / "named.safetensors")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for bad in (str(victim), "../victim.txt", "~/x.safetensors", "named.safetensors"):
        with pytest.raises(ValueError):
            core.save(bad)
    assert victim.read_text() == "precious"
    core.save("named.safetensors", overwrite=True)
    (folder / "d.safetensors").mkdir()
    with pytest.raises(ValueError, match="folder"):
        core.save("d.safetensors", overwrite=True)
    assert not any(f.name.endswith(".tmp") for f in folder.iterdir()) and not any(
        f.name.endswith(".tmp") for f in tmp_path.iterdir())
    core.reset()
    assert core.load("named.safetensors") == n
    with pytest.raises(ValueError, match="outside"):
        core.load(str(victim))
    with pytest.raises(ValueError, match="'\\.\\.'"):
        core.load("../victim.txt")
