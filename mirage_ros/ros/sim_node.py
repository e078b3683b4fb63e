"""``mirage_sim_node``: the built-in synthetic scene, published as a simulator would.

Publishes, all with the same stamp per frame (relative names):
  image        sensor_msgs/Image (rgb8, or bgr8 with image_encoding)
  camera_info  sensor_msgs/CameraInfo (pinhole, no distortion)
  depth        sensor_msgs/Image 32FC1 metres (or 16UC1 millimetres); sky is NaN / 0
  labels       sensor_msgs/Image mono8: 0 static, 1 sky, 2 dynamic (publish_labels)
  pose         geometry_msgs/PoseStamped: the camera optical frame in the world frame
  plan         nav_msgs/Path of the next ``plan_horizon`` poses, every ``plan_period`` s (0: off)
  image/compressed, depth/compressedDepth  sensor_msgs/CompressedImage as image_transport's
               compressed (jpeg) and compressedDepth (png) plugins write them (``compressed``)
along a trajectory (loop | orbit | forward) of ``num_poses`` poses at ``rate`` Hz, looping.
Frames are rendered once and cached, so the rate holds on a CPU.
"""
from __future__ import annotations

import sys

import numpy as np
from rclpy.node import Node

from . import convert as cv
from . import qos

__all__ = ["SimNode", "main", "SIM_PARAMS"]

SIM_PARAMS = {
    "scene": ("room", "room | outdoor"),
    "seed": (0, "scene seed"),
    "moving_object": (False, "add a box circling the centre (label 2, dynamic)"),
    "trajectory": ("loop", "loop | orbit | forward"),
    "num_poses": (46, "poses along the trajectory"),
    "rate": (10.0, "frames per second"),
    "height": (256, "image height (a multiple of 16)"),
    "width": (448, "image width (a multiple of 16)"),
    "fov_x": (70.0, "horizontal field of view (degrees)"),
    "world_frame": ("map", "frame of poses and plans"),
    "camera_frame": ("camera_optical_frame", "frame_id of images and camera_info"),
    "image_encoding": ("rgb8", "rgb8 | bgr8"),
    "depth_encoding": ("32FC1", "32FC1 (m) | 16UC1 (mm)"),
    "publish_labels": (True, "publish the label image on `labels`"),
    "loop": (True, "start over at the end of the trajectory (false: stop publishing)"),
    "plan_horizon": (0, "poses per published plan (0: no plans)"),
    "plan_period": (0.0, "seconds between plans"),
    "compressed": (False, "also publish image/compressed (jpeg) and depth/compressedDepth (png), as image_transport "
                          "does"),
    "jpeg_quality": (90, "JPEG quality of image/compressed"),
}


class SimNode(Node):
    def __init__(self, node_name: str = "mirage_sim", **kw):
        super().__init__(node_name, **kw)
        from rcl_interfaces.msg import ParameterDescriptor

        for name, (default, desc) in SIM_PARAMS.items():
            self.declare_parameter(name, default, ParameterDescriptor(description=desc))
        def g(n):
            return self.get_parameter(n).value

        self.p = {n: g(n) for n in SIM_PARAMS}
        from geometry_msgs.msg import PoseStamped
        from nav_msgs.msg import Path
        from sensor_msgs.msg import CameraInfo, Image

        from .. import sim

        if self.p["image_encoding"] not in ("rgb8", "bgr8") or self.p["depth_encoding"] not in ("32FC1", "16UC1"):
            raise ValueError("image_encoding must be rgb8|bgr8 and depth_encoding 32FC1|16UC1")
        self.scene = sim.make_scene(self.p["scene"], int(self.p["seed"]), bool(self.p["moving_object"]))
        self.traj = sim.scene_trajectory(self.scene, self.p["trajectory"], int(self.p["num_poses"]))
        self.cam0 = sim.default_camera(int(self.p["height"]), int(self.p["width"]), float(self.p["fov_x"]))
        self.sim = sim
        self.frames = {}
        self.types = cv.RclpyTypes()
        q = qos.profile("results", depth=1)
        self.pubs = {
            "image": self.create_publisher(Image, "image", q),
            "camera_info": self.create_publisher(CameraInfo, "camera_info", q),
            "depth": self.create_publisher(Image, "depth", q), "pose": self.create_publisher(PoseStamped, "pose", q),
        }
        if self.p["publish_labels"]:
            self.pubs["labels"] = self.create_publisher(Image, "labels", q)
        if self.p["compressed"]:
            from sensor_msgs.msg import CompressedImage

            self.pubs["image_c"] = self.create_publisher(CompressedImage, "image/compressed", q)
            self.pubs["depth_c"] = self.create_publisher(CompressedImage, "depth/compressedDepth", q)
            self.encoded = {}  # frame index -> (jpeg bytes, format, depth bytes, format), encoded once
        if int(self.p["plan_horizon"]) > 0 and float(self.p["plan_period"]) > 0:
            self.pubs["plan"] = self.create_publisher(Path, "plan", qos.profile("plan"))
            self.create_timer(float(self.p["plan_period"]), self._plan)
        self.i = 0
        self.create_timer(1.0 / float(self.p["rate"]), self._tick)
        self.get_logger().info(
            f"synthetic {self.p['scene']} scene (seed {self.p['seed']}), {self.p['trajectory']} trajectory of "
            f"{len(self.traj)} poses at {self.p['rate']} Hz, {self.p['height']}x{self.p['width']}")

    def frame(self, i: int):
        """Rendered frame i of the trajectory (cached): (rgb, depth, labels, camera)."""
        if i not in self.frames:
            cam = self.cam0.with_pose(self.traj[i])
            f = self.sim.render(self.scene, cam, i / float(self.p["rate"]))
            self.frames[i] = (f.rgb, f.depth, f.labels, cam)
        return self.frames[i]

    def _tick(self) -> None:
        n = len(self.traj)
        if self.i >= n and not self.p["loop"]:
            return
        i = self.i % n
        self.i += 1
        rgb, depth, labels, cam = self.frame(i)
        stamp = self.get_clock().now().nanoseconds
        T, fid, P = self.types, self.p["camera_frame"], self.pubs
        img = rgb[..., ::-1].copy() if self.p["image_encoding"] == "bgr8" else rgb
        P["image"].publish(cv.image_msg(T, img, stamp, fid, self.p["image_encoding"]))
        P["camera_info"].publish(cv.camera_info_msg(T, cam.K.numpy(), cam.height, cam.width, stamp, fid))
        if self.p["depth_encoding"] == "32FC1":
            d = np.where(np.isfinite(depth), depth, np.nan).astype(np.float32)
        else:
            d = np.where(np.isfinite(depth), np.clip(depth * 1000.0, 0, 65535), 0).astype(np.uint16)
        P["depth"].publish(cv.image_msg(T, d, stamp, fid, self.p["depth_encoding"]))
        if "image_c" in P:
            from . import compressed as cz

            if i not in self.encoded:
                self.encoded[i] = (*cz.encode_rgb(rgb, "jpeg", int(self.p["jpeg_quality"])),
                                   *cz.encode_depth(depth, self.p["depth_encoding"]))
            jpg, jfmt, dpng, dfmt = self.encoded[i]
            hdr = cv.header_msg(T, stamp, fid)
            P["image_c"].publish(T.CompressedImage(header=hdr, format=jfmt, data=T.u8(jpg)))
            P["depth_c"].publish(T.CompressedImage(header=cv.header_msg(T, stamp, fid), format=dfmt, data=T.u8(dpng)))
        if "labels" in P:
            P["labels"].publish(cv.image_msg(T, labels.astype(np.uint8), stamp, fid, "mono8"))
        P["pose"].publish(cv.pose_stamped_msg(T, cam.camera_to_world.numpy(), stamp, self.p["world_frame"]))

    def _plan(self) -> None:
        n, h = len(self.traj), int(self.p["plan_horizon"])
        start = self.i % n
        idx = [(start + k) % n for k in range(h)]
        Ts = np.stack([self.cam0.with_pose(self.traj[k]).camera_to_world.numpy() for k in idx])
        now = self.get_clock().now().nanoseconds
        period = int(1e9 / float(self.p["rate"]))
        self.pubs["plan"].publish(cv.path_msg(self.types, Ts, [now + k * period for k in range(h)],
                                              self.p["world_frame"], now))


def main(argv=None) -> int:
    """Spin until SIGINT / SIGTERM (``runtime.spin_until_signal``), exit 0."""
    from .runtime import spin_until_signal

    return spin_until_signal(lambda: [SimNode()], "mirage_sim_node", argv)


if __name__ == "__main__":
    sys.exit(main())
