"""`mirage replay` never destroys what it did not write, and bad input bags fail cleanly.

``--overwrite`` used to ``shutil.rmtree`` whatever ``--out`` named (a
folder with a thesis, or the input bag itself, exit 0); a truncated or garbage MCAP, or a topic
recorded with the wrong type, ended in a traceback, exit 1 and a partial output bag.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mirage_ros.ros.bag import BagWriter, read_messages

ROOT = Path(__file__).resolve().parents[1]
H, W = 64, 112


@pytest.fixture(scope="module")
def scene(room_loop):
    return room_loop(6, H, W)


def _input_bag(path, scene, n=4, image_topic="/image", with_image=True):
    cams, frames = scene
    with BagWriter(path) as bag:
        for i in range(n):
            t = 10**9 + i * 10**8
            if with_image:
                bag.add_image(image_topic, frames[i].rgb, t, "cam")
            bag.add_camera_info("/camera_info", cams[i].K.numpy(), H, W, t, "cam")
            bag.add_pose("/pose", cams[i].camera_to_world.numpy(), t)
            bag.add_depth("/depth", frames[i].depth, t, "cam")
    return path


def _replay(*args):
    """The CLI as a user runs it: a separate process, exit code and stderr. The readout backend:
    these tests are about the files, not the model (the shipped model would add seconds a run)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "mirage_ros", "replay", *map(str, args), "--quiet", "-p",
                           "backend=readout"],
                          capture_output=True, text=True, timeout=300, cwd=str(ROOT), env=env)


def _tree(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# -- --overwrite -------------------------------------------------------------------------

@pytest.mark.slow
def test_overwrite_refuses_a_folder_it_did_not_write(tmp_path, scene):
    src = _input_bag(tmp_path / "in", scene)
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("months of work")
    r = _replay(src, "--out", thesis, "--overwrite")
    assert r.returncode == 2, r.stderr
    assert (thesis / "chapter1.tex").read_text() == "months of work"
    assert "thesis" in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "thesis"]  # no temporary folder left


@pytest.mark.slow
def test_overwrite_refuses_the_input_bag_and_folders_around_it(tmp_path, scene):
    src = _input_bag(tmp_path / "in", scene)
    before = _tree(src)
    for out in (src, src / ".." / "in", src / "sub", tmp_path):
        r = _replay(src, "--out", out, "--overwrite")
        assert r.returncode == 2, (out, r.stderr)
        assert "input" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert _tree(src) == before, out
    # the input given as its .mcap file, output onto its folder
    r = _replay(next(src.glob("*.mcap")), "--out", src, "--overwrite")
    assert r.returncode == 2 and _tree(src) == before


@pytest.mark.slow
def test_overwrite_refuses_a_mirage_bag_with_other_files_in_it(tmp_path, scene):
    src = _input_bag(tmp_path / "in", scene)
    out = tmp_path / "out"
    assert _replay(src, "--out", out).returncode == 0
    (out / "notes.txt").write_text("mine")
    r = _replay(src, "--out", out, "--overwrite")
    assert r.returncode == 2 and "notes.txt" in r.stderr
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_overwrite_replaces_a_bag_this_tool_wrote(tmp_path, scene):
    src = _input_bag(tmp_path / "in", scene)
    out = tmp_path / "out"
    assert _replay(src, "--out", out).returncode == 0
    first = _tree(out)
    r = _replay(src, "--out", out)
    assert r.returncode == 2 and "--overwrite" in r.stderr and _tree(out) == first
    r = _replay(src, "--out", out, "--overwrite", "-p", "observe.update=false")
    assert r.returncode == 0, r.stderr
    assert sum(1 for t, *_ in read_messages(out) if t == "/imagined/image") == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]  # the temporary folder was renamed


def test_bag_writer_writes_into_a_temporary_folder_and_renames_at_the_end(tmp_path):
    target = tmp_path / "bag"
    bag = BagWriter(target)
    bag.add_stats({"num_points": 1}, 10**9)
    assert not target.exists()  # nothing at the target until close()
    bag.close()
    assert target.is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["bag"]
    assert [t for t, *_ in read_messages(target)] == ["/memory/stats"]
    # an exception inside the with-block leaves nothing behind, and the old bag untouched
    old = _tree(target)
    with pytest.raises(RuntimeError):
        with BagWriter(target, overwrite=True) as b2:
            b2.add_stats({"num_points": 2}, 10**9)
            raise RuntimeError("boom")
    assert _tree(target) == old and sorted(p.name for p in tmp_path.iterdir()) == ["bag"]


# -- bad input bags ----------------------------------------------------------------------

def _check_clean_failure(r, tmp_path, out, *names):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    err = r.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in names:
        assert n in err, (n, err)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], list(tmp_path.iterdir())


@pytest.mark.slow
def test_garbage_mcap_fails_cleanly(tmp_path):
    bad = tmp_path / "garbage.mcap"
    bad.write_bytes(b"\x89MCAP0\r\n" + os.urandom(5000))
    out = tmp_path / "out"
    _check_clean_failure(_replay(bad, "--out", out), tmp_path, out, "garbage.mcap")


@pytest.mark.slow
def test_truncated_mcap_fails_cleanly(tmp_path, scene):
    src = _input_bag(tmp_path / "in", scene)
    mcap = next(src.glob("*.mcap"))
    cut = tmp_path / "cut.mcap"
    data = mcap.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    out = tmp_path / "out"
    _check_clean_failure(_replay(cut, "--out", out), tmp_path, out, "cut.mcap")


@pytest.mark.slow
def test_topic_recorded_with_the_wrong_type_fails_cleanly(tmp_path, scene):
    cams, frames = scene
    src = tmp_path / "in"
    with BagWriter(src) as bag:
        for i in range(3):
            t = 10**9 + i * 10**8
            bag.add_pose("/image", cams[i].camera_to_world.numpy(), t)  # a PoseStamped on the image topic
            bag.add_camera_info("/camera_info", cams[i].K.numpy(), H, W, t, "cam")
            bag.add_pose("/pose", cams[i].camera_to_world.numpy(), t)
            bag.add_depth("/depth", frames[i].depth, t, "cam")
    out = tmp_path / "out"
    _check_clean_failure(_replay(src, "--out", out), tmp_path, out, "/image", "geometry_msgs/msg/PoseStamped",
                         "sensor_msgs/msg/Image")
