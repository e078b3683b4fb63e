"""Peak RSS of LatentSpatialMemory.load on a large memory file (issue 8, defect 10).

    python scripts/measure_load_rss.py [--points 3000000]

Writes a memory of N random points (48 bf16 channels: 108 B/point, 3M = 324 MB) to a temporary
file, then loads it in a fresh interpreter and prints the file size, the RSS before the load and
the peak RSS (VmHWM) after it, in MiB.
"""
import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

# VmHWM (this address space's RSS high-water mark), not ru_maxrss: Linux carries ru_maxrss over
# from the parent across fork + exec, which would report the writer's peak.
CHILD = r"""
import sys, torch
from mirage_ros.memory import LatentSpatialMemory
torch.set_num_threads(1)
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
mem = LatentSpatialMemory()
before = status("VmRSS")
mem.load(sys.argv[1])
print(f"{mem.num_points} {before:.0f} {status('VmHWM'):.0f} {status('VmRSS'):.0f}")
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=3_000_000)
    args = ap.parse_args()
    import torch

    from mirage_ros.memory import LatentSpatialMemory

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "big.safetensors"
        mem = LatentSpatialMemory()
        g = torch.Generator().manual_seed(0)
        n = args.points
        mem.add_points((torch.rand(n, 3, generator=g) - 0.5) * 100, torch.randn(n, 48, generator=g).bfloat16())
        mem.save(path)
        del mem
        size = path.stat().st_size / 2**20
        out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True)
        n, before, peak, after = out.stdout.split()
        print(f"file {size:.0f} MiB ({n} points): RSS before load {before} MiB, peak {peak} MiB "
              f"(+{float(peak) - float(before):.0f} MiB), after {after} MiB")


if __name__ == "__main__":
    main()
