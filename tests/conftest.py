"""Shared test fixtures, and the ``slow`` marker: tests that take seconds each (training runs, the
shipped model, subprocess CLIs, bag round trips) are left out of ``bash scripts/test.sh --fast``."""
import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: seconds or more each; not in the fast tier (scripts/test.sh --fast)")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine threads spin."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def room_loop():
    """``room_loop(n, H, W)``: cameras and rendered frames of the seed-0 room along an n-pose loop."""

    def make(n, H, W):
        from mirage_ros import sim

        scene = sim.make_scene("room", 0)
        cams = [sim.default_camera(H, W).with_pose(E) for E in sim.scene_trajectory(scene, "loop", n)]
        return cams, [sim.render(scene, c, 0.0) for c in cams]

    return make
