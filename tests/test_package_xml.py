"""package.xml names every dependency with its rosdep key, consistently with CMakeLists.txt's
find_package() and with what the Python code imports (read with ast, no ROS needed).

A new import fails here until it is classified below: a ROS package (its name is the key), a Python
package with a rosdep key (rosdistro's rosdep/python.yaml), or one without a key (then pinned in
requirements.txt and named in package.xml's "No rosdep key" comment).
"""
import ast
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Python module -> rosdep key (keys as rosdistro's rosdep/python.yaml spells them)
PY_KEYS = {
    "numpy": "python3-numpy", "yaml": "python3-yaml", "torch": "python3-torch", "cv2": "python3-opencv",
    "matplotlib": "python3-matplotlib", "tqdm": "python3-tqdm", "transformers": "python3-transformers-pip",
    "rosbags": "python3-rosbags-pip", "PIL": "python3-pil", "scipy": "python3-scipy",
    # tests
    "pytest": "python3-pytest", "psutil": "python3-psutil", "kornia": "python3-kornia-pip",
    "mcap_ros2": "mcap-ros2-support",
}
# Python module -> PyPI distribution, for packages rosdep has no key for
NO_KEY = {
    "safetensors": "safetensors", "diffusers": "diffusers", "peft": "peft", "accelerate": "accelerate",
    "tokenizers": "tokenizers", "ftfy": "ftfy", "lmdb": "lmdb", "av": "av", "simplejpeg": "simplejpeg",
    "depth_anything_3": "depth-anything-3",
    "mcap": "mcap",
}
# ROS packages imported from Python that are not *_msgs / *_srvs / *_interfaces
ROS_PY = {"rclpy", "launch", "launch_ros", "ament_index_python", "tf2_ros", "rosidl_runtime_py", "message_filters",
          "rosbag2_py", "sensor_msgs_py", "cv_bridge"}
# declared but neither imported nor find_package()d: why
INDIRECT = {
    "rosidl_default_runtime": "the generated interfaces' runtime (ament_export_dependencies)",
    "action_msgs": "rosidl_generate_interfaces needs it for action/*.action; rclpy.action uses it",
    "lifecycle_msgs": "mirage_node is a lifecycle node (rclpy.lifecycle)",
    "python3-pytest-timeout": "scripts/test.sh runs pytest --timeout",
}
TEST_LOCAL = {"rosprobe", "chromium_cdp", "conftest"}


def _is_ros(mod):
    return mod in ROS_PY or re.search(r"_(msgs|srvs|interfaces)$", mod) is not None


def _imports(paths):
    out = {}
    for p in paths:
        for n in ast.walk(ast.parse(p.read_text(), str(p))):
            names = ([a.name for a in n.names] if isinstance(n, ast.Import)
                     else [n.module] if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module else [])
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "mirage_ros":
                    out.setdefault(top, set()).add(str(p.relative_to(ROOT)))
    return out


def _package_xml():
    px = ET.parse(ROOT / "package.xml").getroot()
    tags = {}
    for tag in ("buildtool_depend", "build_depend", "build_export_depend", "exec_depend", "depend", "test_depend"):
        tags[tag] = [e.text.strip() for e in px.findall(tag)]
    comments = (ROOT / "package.xml").read_text()
    no_key_comment = re.search(r"<!--\s*No rosdep key exists for:(.*?)-->", comments, re.S)
    return tags, (no_key_comment.group(1) if no_key_comment else "")


def _cmake():
    cm = re.sub(r"#[^\n]*", "", (ROOT / "CMakeLists.txt").read_text())
    found = set(re.findall(r"find_package\(\s*(\w+)", cm))
    m = re.search(r"rosidl_generate_interfaces\((.*?)\)", cm, re.S)
    deps = set(m.group(1).split("DEPENDENCIES", 1)[1].split()) if m and "DEPENDENCIES" in m.group(1) else set()
    return found, deps


def _runtime_sources():
    return (sorted((ROOT / "mirage_ros").rglob("*.py")) + sorted(p for p in (ROOT / "nodes").iterdir() if p.is_file())
            + sorted((ROOT / "launch").glob("*.py")))


def _pinned():
    names = set()
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        m = re.match(r"^\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*==", line)
        if m:
            names.add(m.group(1).lower().replace("_", "-"))
    return names


def _check(imports, allowed, no_key_comment, where):
    pinned = _pinned()
    problems = []
    for mod, files in sorted(imports.items()):
        f = sorted(files)[0]
        if _is_ros(mod):
            if mod not in allowed:
                problems.append(f"{mod} (imported in {f}) is a ROS package missing from package.xml's {where}")
        elif mod in PY_KEYS:
            if PY_KEYS[mod] not in allowed:
                problems.append(f"{mod} (imported in {f}): add <{where}>{PY_KEYS[mod]}</{where}> to package.xml")
        elif mod in NO_KEY:
            dist = NO_KEY[mod]
            if dist not in pinned:
                problems.append(f"{mod} (imported in {f}) has no rosdep key and {dist} is not pinned in "
                                f"requirements.txt")
            if where != "test_depend" and not re.search(rf"(?<![\w-]){re.escape(dist)}(?![\w-])", no_key_comment):
                problems.append(f"{mod} (imported in {f}) has no rosdep key: name {dist} in package.xml's 'No rosdep "
                                f"key' comment")
        else:
            problems.append(f"{mod} (imported in {f}) is not classified: add it to PY_KEYS, NO_KEY or ROS_PY in "
                            f"tests/test_package_xml.py, and to package.xml")
    return problems


def test_every_dependency_is_declared_once_with_a_well_formed_key():
    tags, _ = _package_xml()
    everything = [k for v in tags.values() for k in v]
    twice = [k for k in everything if everything.count(k) > 1]
    assert len(everything) == len(set(everything)), f"declared twice: {twice}"
    for k in everything:
        assert re.fullmatch(r"[a-z0-9][a-z0-9_.+-]*", k), k


def test_cmake_find_package_and_interface_dependencies_are_declared():
    tags, _ = _package_xml()
    found, deps = _cmake()
    build = set(tags["buildtool_depend"]) | set(tags["build_depend"]) | set(tags["depend"])
    assert found <= build, f"find_package() without a build dependency in package.xml: {sorted(found - build)}"
    # a generated interface needs its dependencies when building and when running
    both = set(tags["depend"]) | (set(tags["build_depend"]) & set(tags["exec_depend"]))
    assert deps <= both, f"rosidl DEPENDENCIES not declared as <depend>: {sorted(deps - both)}"
    assert deps <= found, f"rosidl DEPENDENCIES without find_package(): {sorted(deps - found)}"
    assert "rosidl_default_generators" in tags["buildtool_depend"]
    assert "rosidl_default_runtime" in tags["exec_depend"] + tags["depend"]


@pytest.mark.slow
def test_runtime_imports_are_declared():
    tags, comment = _package_xml()
    allowed = set(tags["exec_depend"]) | set(tags["depend"])
    problems = _check(_imports(_runtime_sources()), allowed, comment, "exec_depend")
    assert not problems, "\n".join(problems)


def test_test_imports_are_declared():
    tags, comment = _package_xml()
    allowed = set(tags["test_depend"]) | set(tags["exec_depend"]) | set(tags["depend"])
    imports = {m: f for m, f in _imports(sorted((ROOT / "tests").rglob("*.py"))).items() if m not in TEST_LOCAL}
    problems = _check(imports, allowed, comment, "test_depend")
    assert not problems, "\n".join(problems)


def test_launch_files_only_start_declared_packages():
    tags, _ = _package_xml()
    allowed = set(tags["exec_depend"]) | set(tags["depend"]) | {"mirage_ros"}
    for lf in sorted((ROOT / "launch").glob("*.launch.py")):
        for n in ast.walk(ast.parse(lf.read_text())):
            if isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", "")) == "Node":
                pkg = {k.arg: k.value for k in n.keywords}["package"].value
                assert pkg in allowed, f"{lf.name} starts {pkg}, which package.xml does not <exec_depend> on"


def test_no_declared_dependency_is_unused():
    """Each ROS/Python key is imported, find_package()d, started by a launch file, or listed in INDIRECT."""
    tags, _ = _package_xml()
    found, _ = _cmake()
    used = set(found)
    for m in _imports(_runtime_sources()) | _imports(sorted((ROOT / "tests").rglob("*.py"))):
        used.add(PY_KEYS.get(m, m))
    for lf in (ROOT / "launch").glob("*.launch.py"):
        used |= set(re.findall(r"package=\"(\w+)\"", lf.read_text()))
    declared = {k for tag in ("build_depend", "exec_depend", "depend", "test_depend") for k in tags[tag]}
    unused = declared - used - set(INDIRECT)
    assert not unused, f"declared in package.xml but never used (remove, or say why in INDIRECT): {sorted(unused)}"
    stale = set(INDIRECT) - declared
    assert not stale, f"INDIRECT names undeclared dependencies: {sorted(stale)}"
