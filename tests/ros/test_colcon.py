"""`colcon build` of the package against the PyPI ROS 2 wheels, then mirage_node started from the
install space as `ros2 run mirage_ros mirage_node` does, and checked by a real rclpy peer.

scripts/colcon_build.sh builds src/mirage_ros (a copy of the repository's files) and, where the
wheels lack it, src/tf2_msgs in a workspace under .ros_build/colcon (git-ignored). The node runs in
an environment made only from the venv and the install space's setup.bash: the repository and the
interfaces of scripts/build_interfaces.sh are taken off every path, so what answers is the
installed package. The peer (this process) uses build_interfaces.sh's separately generated
interfaces, so the two builds must agree on every type. Skips, saying why, where colcon is not
installed (scripts/install.sh puts it in .ros_build/colcon/venv).
"""
import ast
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from rosprobe import wait_for, write_params

from mirage_ros.ros.probe import interrupt

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("MIRAGE_ROS_BUILD", ROOT / ".ros_build"))
NS = "/colcon"
FRAME = "colcon_imagined_optical_frame"  # unique: /tf is shared by every node of the session
H, W = 64, 112

# What `ros2 run PKG EXE ARGS...` does (ros2run.api.get_executable_path): the package's prefix from
# the ament index, then PREFIX/lib/PKG/EXE if it is an executable file; it runs that file.
ROS2_RUN = r"""
import os, sys
from ament_index_python.packages import get_package_prefix
pkg, exe = sys.argv[1:3]
path = os.path.join(get_package_prefix(pkg), "lib", pkg, exe)
if not (os.path.isfile(path) and os.access(path, os.X_OK)):
    sys.exit(f"No executable found: {path}")
print(f"ros2 run: {path}", flush=True)
os.execv(path, [path] + sys.argv[3:])
"""


def _colcon():
    for c in (os.environ.get("MIRAGE_COLCON"), BUILD / "colcon" / "venv" / "bin" / "colcon", shutil.which("colcon")):
        if c and os.access(str(c), os.X_OK):
            return str(c)
    return None


def _node_env():
    """The test environment (loopback DDS, the venv) without the repository or build_interfaces.sh's
    interfaces on PYTHONPATH, AMENT_PREFIX_PATH or LD_LIBRARY_PATH."""
    env = dict(os.environ)
    interfaces = str(BUILD / "install")

    def keep(p):  # the venv (also inside the repository) stays
        return p and os.path.normpath(p) != str(ROOT) and not (p == interfaces or p.startswith(interfaces + os.sep))

    for var in ("PYTHONPATH", "AMENT_PREFIX_PATH", "LD_LIBRARY_PATH", "CMAKE_PREFIX_PATH", "COLCON_PREFIX_PATH"):
        parts = [p for p in env.get(var, "").split(os.pathsep) if keep(p)]
        if parts:
            env[var] = os.pathsep.join(parts)
        else:
            env.pop(var, None)
    return env


def _in_install_env(install, script, *args, cwd, **kw):
    """Run ``script`` (bash) after sourcing the install space's setup.bash."""
    cmd = ["bash", "-c", f'source "$1/setup.bash" && shift && {script}', "_", str(install), *args]
    return cmd, dict(env=_node_env(), cwd=str(cwd), **kw)


@pytest.fixture(scope="module")
def install():
    colcon = _colcon()
    if colcon is None:
        pytest.skip("colcon is not installed (bash scripts/install.sh puts it in .ros_build/colcon/venv; "
                    "pins: requirements.txt group colcon)")
    r = subprocess.run(["bash", str(ROOT / "scripts" / "colcon_build.sh")], cwd=str(ROOT), capture_output=True,
                       text=True, env={**os.environ, "MIRAGE_COLCON": colcon})
    assert r.returncode == 0, f"colcon build failed:\n{r.stderr[-6000:]}"
    return Path(r.stdout.strip().splitlines()[-1])


def test_install_space_holds_the_package(install):
    pkg = install / "mirage_ros"
    share = pkg / "share" / "mirage_ros"
    exes = sorted(p.name for p in (ROOT / "nodes").iterdir() if p.is_file())
    assert {"mirage_node", "mirage_sim_node"} <= set(exes)
    for exe in exes:  # `ros2 run mirage_ros EXE` finds every node executable
        p = pkg / "lib" / "mirage_ros" / exe
        assert p.is_file() and os.access(p, os.X_OK), p
    assert (pkg / "share" / "ament_index" / "resource_index" / "packages" / "mirage_ros").is_file()
    assert (share / "package.xml").read_bytes() == (ROOT / "package.xml").read_bytes()
    for sub, pattern in (("msg", "*.msg"), ("srv", "*.srv"), ("action", "*.action"), ("launch", "*.launch.py"),
                         ("config", "*")):
        want = sorted(p.name for p in (ROOT / sub).glob(pattern))
        assert want and sorted(p.name for p in (share / sub).glob(pattern)) == want, sub
    site = next((pkg / "lib").glob("python3*/site-packages"))
    # one `mirage_ros` Python package: the library and the generated interfaces side by side
    for mod in ("__init__.py", "ros/node.py", "ros/sim_node.py", "memory/__init__.py", "msg/__init__.py",
                "srv/__init__.py", "action/__init__.py"):
        assert (site / "mirage_ros" / mod).is_file(), mod
    assert list((site / "mirage_ros").glob("mirage_ros_s__rosidl_typesupport_*.so"))
    for f in ("setup.bash", "local_setup.bash", "setup.sh"):
        assert (install / f).is_file(), f


def _launch_refs(path):
    """Packages, executables and share-relative files a launch file names (read with ast)."""
    tree = ast.parse(path.read_text())
    nodes, files, share_pkgs = [], [], set()
    for n in ast.walk(tree):
        if not isinstance(n, ast.Call):
            continue
        name = getattr(n.func, "id", getattr(n.func, "attr", ""))
        kw = {k.arg: k.value for k in n.keywords}
        if name == "Node":
            nodes.append((kw["package"].value, kw["executable"].value))
        elif name == "get_package_share_directory":
            share_pkgs.add(n.args[0].value)
        elif name == "join" and n.args and all(isinstance(a, ast.Constant) for a in n.args[1:]):
            files.append([a.value for a in n.args[1:]])
    return nodes, files, share_pkgs


def test_installed_launch_files_name_what_the_install_space_has(install):
    """launch / launch_ros are not on PyPI, so the launch files cannot run here: check that every
    mirage_ros executable and file they name is in the install space (rviz2 only on a ROS install)."""
    share = install / "mirage_ros" / "share" / "mirage_ros"
    launches = sorted((share / "launch").glob("*.launch.py"))
    assert launches
    for lf in launches:
        nodes, files, share_pkgs = _launch_refs(lf)
        assert share_pkgs == {"mirage_ros"}, (lf.name, share_pkgs)
        for pkg, exe in nodes:
            if pkg == "rviz2":
                continue
            assert pkg == "mirage_ros", (lf.name, pkg)
            p = install / pkg / "lib" / pkg / exe
            assert p.is_file() and os.access(p, os.X_OK), (lf.name, p)
        assert files, lf.name
        for parts in files:  # os.path.join(share, "config", "mirage.yaml") etc.
            assert share.joinpath(*parts).is_file(), (lf.name, parts)


def test_node_from_the_install_space_answers_a_real_peer(install, probe, room_loop, tmp_path):
    from lifecycle_msgs.srv import GetState
    from sensor_msgs.msg import CameraInfo
    from tf2_msgs.msg import TFMessage

    from mirage_ros.ros import convert as cv

    # 1. in the install space's environment, every module the node needs comes from the install space
    where = ("import json, mirage_ros, mirage_ros.ros.node, mirage_ros.msg, mirage_ros.action, tf2_msgs.msg; "
             "from ament_index_python.packages import get_package_prefix as p; "
             "print(json.dumps({'pkg': list(mirage_ros.__path__), 'node': mirage_ros.ros.node.__file__, "
             "'msg': mirage_ros.msg.__file__, 'action': mirage_ros.action.__file__, 'tf2': tf2_msgs.msg.__file__, "
             "'prefix': p('mirage_ros')}))")
    cmd, kw = _in_install_env(install, 'exec python -c "$1"', where, cwd=tmp_path)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["prefix"] == str(install / "mirage_ros")
    site = next((install / "mirage_ros" / "lib").glob("python3*/site-packages")).resolve()
    assert [Path(p).resolve() for p in got["pkg"]] == [site / "mirage_ros"]
    for k in ("node", "msg", "action"):
        assert Path(got[k]).resolve().is_relative_to(install / "mirage_ros"), (k, got[k])
    if not (Path(os.environ.get("VIRTUAL_ENV", "/nonexistent")) / "share" / "tf2_msgs" / "package.xml").is_file():
        assert Path(got["tf2"]).resolve().is_relative_to(install / "tf2_msgs"), got["tf2"]

    # 2. `ros2 run mirage_ros mirage_node` with the installed parameter file and a few overrides
    share = install / "mirage_ros" / "share" / "mirage_ros"
    over = write_params(tmp_path / "overrides.yaml", {"chunk_size": 4, "viz.stats_period": 0.1,
                                                      "imagined.frame_id": FRAME, "memory.save_dir": str(tmp_path)})
    log_path = tmp_path / "mirage_node.log"
    cmd, kw = _in_install_env(install, 'exec python -c "$@"', ROS2_RUN, "mirage_ros", "mirage_node", "--ros-args",
                              "-r", f"__ns:={NS}", "--params-file", str(share / "config" / "mirage.yaml"),
                              "--params-file", str(over), cwd=tmp_path)
    probe.watch(NS)
    probe.listen(f"{NS}/imagined/camera_info", CameraInfo)
    probe.listen("/tf", TFMessage)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, **kw)
    try:
        # 3. a real rclpy peer: it is up (stats flow, lifecycle active) and does its job
        probe.stats(NS, timeout=120)
        state = probe.call(f"{NS}/mirage/get_state", GetState, GetState.Request())
        assert state.current_state.label == "active"
        cams, frames = room_loop(4, H, W)
        t0, k = time.monotonic(), 0
        while True:  # sensors are BEST_EFFORT: publish again until observed
            probe.publish_set(NS, cams[0], frames[0], 10**9 + k)
            k += 1
            try:
                probe.wait_stats(NS, lambda s: s.num_points > 0, timeout=0.5)
                break
            except TimeoutError:
                assert time.monotonic() - t0 < 120 and proc.poll() is None, log_path.read_text()[-3000:]
        stamps = [30 * 10**9 + i * 10**8 for i in range(3)]
        res = probe.imagine(NS, probe.path(cams[:3], stamps), expect_frames=3, chunk_size=4)
        assert res["result"].status == 0, res["result"].message
        assert [cv.stamp_to_ns(m.header.stamp) for m in res["images"]] == stamps
        assert all(m.header.frame_id == FRAME for m in res["images"])
        assert len(res["chunks"]) == 1 and list(res["chunks"][0].frame_indices) == [0, 1, 2]
        # /tf of the workspace-built tf2_msgs, read with the peer's own build of it
        tfs = wait_for(lambda: {cv.stamp_to_ns(t.header.stamp) for m in probe.msgs("/tf") for t in m.transforms
                                if t.child_frame_id == FRAME} >= set(stamps) or None, 30, what="/tf per imagined frame")
        assert tfs
    finally:
        interrupt(proc, 30)
        print(log_path.read_text(errors="replace")[-3000:])
    assert proc.returncode == 0, f"mirage_node exited with {proc.returncode}"
    assert f"ros2 run: {install / 'mirage_ros' / 'lib' / 'mirage_ros' / 'mirage_node'}" in log_path.read_text()
