"""mirage_ros: pip (library + CLI, no ROS needed) and colcon (ament) share this file.

Every dependency pin lives in requirements.txt; this file only reads it.
"""
import re
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
PACKAGE = "mirage_ros"


def read_pins(path=HERE / "requirements.txt"):
    """Return {group: [requirement, ...]} from requirements.txt's `name==ver  # group` lines."""
    groups = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^\s*([^#\s][^#]*?)\s*#\s*([\w-]+)\s*$", line)
        if m:
            groups.setdefault(m.group(2), []).append(m.group(1))
    return groups


PINS = read_pins()

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Latent spatial memory (Mirage) for video world models, as a ROS 2 node and a library",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=[PACKAGE, PACKAGE + ".*"]),
    # the shipped world model (weights, codec, config, recipe, log) travels with the package
    package_data={PACKAGE: ["data/*", "models/*/*", "models/*/*/*", "models/*/*/*/*"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        ("share/" + PACKAGE + "/launch", glob("launch/*.py")),
        ("share/" + PACKAGE + "/config", glob("config/*")),
        # interface definitions: colcon builds them; a plain pip install ships them so the bag
        # writer can register the custom types with rosbags
        ("share/" + PACKAGE + "/msg", glob("msg/*.msg")),
        ("share/" + PACKAGE + "/srv", glob("srv/*.srv")),
        ("share/" + PACKAGE + "/action", glob("action/*.action")),
    ],
    install_requires=PINS.get("core", []),
    extras_require={k: v for k, v in PINS.items() if k not in ("core", "nodeps")},
    entry_points={
        "console_scripts": [
            "mirage = mirage_ros.cli:main",
            "mirage_node = mirage_ros.ros.node:main",
            "mirage_sim_node = mirage_ros.ros.sim_node:main",
            "mirage_multi_node = mirage_ros.ros.multi_node:main",
            "mirage_planner_example = mirage_ros.ros.planner_example:main",
        ]
    },
)
