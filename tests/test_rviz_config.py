"""config/mirage.rviz against the node it visualises, statically (RViz is not on PyPI).

The node's topics, their message types and QoS kinds are read from the table the node creates
them from (``interfaces.TOPICS``); every RViz display must name one of them with a type the
display accepts and a QoS the publisher serves.
The Camera display finds its camera_info as RViz does (image_transport::getCameraInfoTopic: the
sibling ``camera_info`` of the image topic) and places the image by its frame on /tf.
"""
from pathlib import Path

import yaml

from mirage_ros.ros.interfaces import TOPICS
from mirage_ros.ros.params import defaults

ROOT = Path(__file__).resolve().parents[1]

# RViz display class -> the message type it subscribes to
DISPLAY_TYPES = {"rviz_default_plugins/PointCloud2": "PointCloud2", "rviz_default_plugins/MarkerArray": "MarkerArray",
                 "rviz_default_plugins/Path": "Path", "rviz_default_plugins/Image": "Image",
                 "rviz_default_plugins/Camera": "Image"}


def node_interfaces():
    """{absolute topic: (message type, qos kind)} of publishers and subscriptions."""
    pubs, subs = {}, {}
    for t in TOPICS:
        topic = t.name if t.name.startswith("/") else "/" + t.name  # the default (root) namespace
        (pubs if t.direction == "out" else subs)[topic] = (t.type, t.qos)
    return pubs, subs


def camera_info_topic(image_topic):
    """image_transport::getCameraInfoTopic: the camera_info beside the image topic."""
    return image_topic.rsplit("/", 1)[0] + "/camera_info"


def test_rviz_displays_name_the_nodes_topics_with_matching_types_and_qos():
    pubs, subs = node_interfaces()
    assert "/imagined/image" in pubs and "/memory/points" in pubs
    rv = yaml.safe_load((ROOT / "config" / "mirage.rviz").read_text())
    vm = rv["Visualization Manager"]
    assert vm["Global Options"]["Fixed Frame"] == defaults()["world_frame"]
    displays = vm["Displays"]
    classes = [d["Class"] for d in displays]
    assert "rviz_default_plugins/TF" in classes and "rviz_default_plugins/Camera" in classes
    for d in displays:
        if d["Class"] not in DISPLAY_TYPES:
            assert "Topic" not in d, d["Name"]
            continue
        topic, want = d["Topic"]["Value"], DISPLAY_TYPES[d["Class"]]
        if topic in pubs:
            mtype, q = pubs[topic]
            assert mtype == want, f"{d['Name']}: {topic} is {mtype}, the display reads {want}"
            # a Reliable reader needs a reliable writer: every node publisher is (results, latched, tf)
            assert d["Topic"]["Reliability Policy"] in ("Reliable", "Best Effort")
            if d["Topic"].get("Durability Policy") == "Transient Local":
                assert q == "latched", f"{d['Name']}: Transient Local on {topic}, published with {q}"
        else:
            assert topic in subs and subs[topic][0] == want, f"{d['Name']}: {topic} is none of the node's topics"
        if d["Class"] == "rviz_default_plugins/Camera":
            info = camera_info_topic(topic)
            assert pubs.get(info, (None,))[0] == "CameraInfo", f"{d['Name']}: no CameraInfo on {info}"
            assert pubs.get("/tf", (None,))[0] == "TFMessage", "the Camera display needs the image's frame on /tf"
        if d["Class"] == "rviz_default_plugins/Camera" and "Visibility" in d:
            names = {x["Name"] for x in displays}
            assert set(d["Visibility"]) - {"Value"} <= names, "Camera visibility names unknown displays"
    # what viewers need from the node's imagined camera is there
    assert {"/imagined/image", "/imagined/camera_info", "/memory/points", "/memory/frustums"} <= {
        d["Topic"]["Value"] for d in displays if "Topic" in d} | {camera_info_topic("/imagined/image")}
