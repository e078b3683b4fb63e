"""Hostile input, round 3 (issue 15), without ROS: parameters, decoding bombs, pairing and tf
budgets, forks, codecs, model configs, bags and training files. Each test names its item."""
import math
from pathlib import Path

import numpy as np
import pytest

from mirage_ros.ros.params import PARAMS, ParamError, markdown_table, validate

ROOT = Path(__file__).resolve().parents[1]


# -- item 3: parameters --------------------------------------------------------------------------------

def test_item3_files_folders_and_the_model_are_fixed_at_launch():
    launch = {p.name for p in PARAMS if p.mode == "launch"}
    for name in ("memory.save_dir", "memory.load_path", "weights_dir", "mirage.side_branch", "mirage.lora",
                 "depth.weights", "masks.sam3_dir", "masks.qwen_dir", "backend", "mirage.config", "device"):
        assert name in launch, name
    assert all(p.mode == "launch" for p in PARAMS if p.kind == "path")


def test_item3_every_number_is_bounded_and_nan_inf_are_refused():
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


def test_item3_readme_parameter_table_is_generated_from_params():
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme, "README's parameter table differs from params.markdown_table()"
    for p in PARAMS:
        assert f"| `{p.name}` |" in readme
