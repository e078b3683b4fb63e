"""Rollout pairs (a model's generated latents beside the true frames) and the deblocker trained on them.

The pairs must be what the rollout itself decoded (decoding a stored latent gives the rollout's emitted
frame) beside the simulator's frame at the same pose; held-out seeds are refused. The fine-tune must
learn a systematic error of "generated" latents that the clean-latent decoder cannot undo.
"""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from mirage_ros.world_model.backend import SHIPPED_MODEL

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_pairs_hold_the_latents_the_rollout_decoded_and_the_true_frames_at_their_poses(tmp_path):
    from mirage_ros.training.rollout_pairs import collect_rollout_pairs, iter_rollout_pairs
    from mirage_ros.training.sim_data import render_clip, sim_clip_source
    from mirage_ros.world_model.codec import tensor_to_images
    from mirage_ros.world_model.model import MirageWorldModel

    meta = collect_rollout_pairs(SHIPPED_MODEL, tmp_path, [2000], frames=5, trajectory="loop", progress=False)
    assert meta["seeds"] == [2000] and json.loads((tmp_path / "pairs.json").read_text())["frames"] == 5
    [(seed, rgb, lat, mem)] = list(iter_rollout_pairs(tmp_path))
    src = sim_clip_source(2000, "mixed", 5)
    src["trajectory"] = "loop"
    truth = render_clip(src, 128, 224)[0]
    assert seed == 2000 and rgb.dtype == np.uint8 and np.array_equal(rgb, truth[1:])
    assert lat.shape == (4, 48, 8, 14) and torch.isfinite(lat).all()
    assert mem.shape == (4, 8, 14) and mem.dtype == torch.bool and 0 < int(mem.sum()) < mem.numel()
    # the stored latents decode to frames of the scene, much nearer the truth than another scene's
    codec = MirageWorldModel.from_pretrained(SHIPPED_MODEL, device="cpu").codec
    dec = tensor_to_images(codec.decode(lat)).astype(np.float64)
    other = render_clip(sim_clip_source(2001, "mixed", 5), 128, 224)[0][1:].astype(np.float64)
    assert np.mean((dec - truth[1:]) ** 2) < 0.5 * np.mean((other - truth[1:]) ** 2)


@pytest.mark.slow
def test_rollout_pairs_cli_refuses_held_out_seeds(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mirage_ros", "data", "rollout-pairs", "--model", str(SHIPPED_MODEL),
                        "--out", str(tmp_path / "p"), "--seeds", "899999-900001"], capture_output=True, text=True)
    assert r.returncode == 2 and "held-out" in r.stderr and not (tmp_path / "p").exists()


def _write_pairs(folder, seeds, rgb, lat, memory=None):
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    for s in seeds:
        t = {"latent": lat.half().contiguous(), "rgb": torch.from_numpy(rgb)}
        if memory is not None:
            t["memory"] = memory.to(torch.uint8).contiguous()
        save_file(t, str(folder / f"{s}.safetensors"))
    (folder / "pairs.json").write_text(json.dumps({"seeds": list(seeds)}))


@pytest.mark.slow
def test_deblocker_fine_tuned_on_pairs_learns_their_systematic_error(tmp_path):
    """'Generated' latents = the true frames' latents with the block-mean component shifted (a model
    that paints every block too bright): decoded as they are, they miss the truth; after fine-tuning on
    such pairs (rollouts only) the decode of unseen pairs of the same kind is much nearer the truth,
    and the run keeps the best validation step and says so in its record. Written as the imagination
    decoder of the shipped codec (``imagined_of``), whose clean decoder stays as it was."""
    from mirage_ros.training.deblocker_fit import fit_deblocker
    from mirage_ros.training.sim_data import render_clip, sim_clip_source
    from mirage_ros.util import psnr
    from mirage_ros.world_model.codec import images_to_tensor, load_codec, tensor_to_images

    codec_dir = SHIPPED_MODEL / "codec"
    codec = load_codec(codec_dir)
    shift = torch.zeros(48, 1, 1)
    shift[0] = 2.0  # the first block-PCA component: mostly the block's mean brightness

    def pairs(seed):
        rgb = render_clip(sim_clip_source(seed, "mixed", 9), 128, 224)[0][1:]
        return rgb, codec.encode(images_to_tensor(rgb)) + shift

    train_rgb, train_lat = pairs(2000)
    val_rgb, val_lat = pairs(800000)
    _write_pairs(tmp_path / "train", [2000], train_rgb, train_lat)
    _write_pairs(tmp_path / "val", [800000], val_rgb, val_lat)
    k = np.linspace(0, len(val_rgb) - 1, 10).astype(int)  # the frames fit_deblocker validates on
    val_rgb, val_lat = val_rgb[k], val_lat[k]
    before = psnr(val_rgb, tensor_to_images(codec.decode(val_lat.half().float())))
    res = fit_deblocker(None, tmp_path / "out", steps=40, batch=4, lr=5e-4, warmup=5, validate_every=20,
                        validation_seeds=1, init=codec_dir, rollouts=tmp_path / "train", rollout_prob=1.0,
                        validation_rollouts=tmp_path / "val", imagined_of=codec_dir, progress=False)
    tuned = load_codec(tmp_path / "out")  # the shipped codec with the fit as its imagination decoder
    z = val_lat.half().float()
    assert torch.equal(tuned.decode(z), codec.decode(z))  # memory (no mask): the clean decoder, unchanged
    assert tuned.seam_filter == codec.seam_filter is not None  # the shipped codec's seam filter is kept
    tuned.seam_filter = None  # the fit scores the imagination decoder itself, without the filter
    after = psnr(val_rgb, tensor_to_images(tuned.decode(z, memory_cells=torch.zeros(len(z), 8, 14, dtype=torch.bool))))
    assert (tmp_path / "out" / "imagined_fit.json").is_file() and (tmp_path / "out" / "fit.json").is_file()
    assert res["selection"] == "rollout_psnr_db" and res["rollout_scenes"] == 1
    assert abs(res["start"]["rollout_psnr_db"] - before) < 0.05
    assert after > before + 2.0 and abs(res["refined_best"]["rollout_psnr_db"] - after) < 0.05
    assert torch.equal(tuned.basis, codec.basis)  # the encoder (and so every model's latents) is unchanged


def test_fine_tune_refuses_validation_pairs_outside_the_validation_block(tmp_path):
    from mirage_ros.training.deblocker_fit import fit_deblocker

    rgb = np.zeros((2, 128, 224, 3), np.uint8)
    _write_pairs(tmp_path / "p", [2000], rgb, torch.zeros(2, 48, 8, 14))
    with pytest.raises(ValueError, match="validation_rollouts: seed 2000"):
        fit_deblocker(None, tmp_path / "out", steps=1, init=SHIPPED_MODEL / "codec", rollouts=tmp_path / "p",
                      validation_rollouts=tmp_path / "p", validation_seeds=1, progress=False)
    with pytest.raises(ValueError, match="data: give a dataset"):
        fit_deblocker(None, tmp_path / "out", steps=1, progress=False)


@pytest.mark.slow
def test_imagination_fit_scores_and_learns_only_what_it_will_draw(tmp_path):
    """Memory cells (left half) hold clean latents, the rest is shifted: the blended validation
    (host decoder on memory cells) starts at the host's own decode, and with ``imagined_loss`` the fit
    improves the imagined half while the memory half of the blend stays the host's decode exactly."""
    from mirage_ros.training.deblocker_fit import fit_deblocker
    from mirage_ros.training.sim_data import render_clip, sim_clip_source
    from mirage_ros.util import psnr
    from mirage_ros.world_model.codec import images_to_tensor, load_codec, tensor_to_images

    codec_dir = SHIPPED_MODEL / "codec"
    codec = load_codec(codec_dir)
    memory = torch.zeros(8, 8, 14, dtype=torch.bool)
    memory[:, :, :7] = True

    def pairs(seed):
        rgb = render_clip(sim_clip_source(seed, "mixed", 9), 128, 224)[0][1:]
        z = codec.encode(images_to_tensor(rgb))
        z[:, 0, :, 7:] += 2.0  # the imagined half painted too bright
        return rgb, z.half().float()

    (tr, ztr), (va, zva) = pairs(2000), pairs(800000)
    _write_pairs(tmp_path / "train", [2000], tr, ztr, memory)
    _write_pairs(tmp_path / "val", [800000], va, zva, memory)
    k = np.linspace(0, len(va) - 1, 10).astype(int)
    host_psnr = psnr(va[k], tensor_to_images(codec.decode(zva[k])))
    res = fit_deblocker(None, tmp_path / "out", steps=40, batch=4, lr=5e-4, warmup=5, validate_every=20,
                        validation_seeds=1, init=codec_dir, rollouts=tmp_path / "train", rollout_prob=1.0,
                        validation_rollouts=tmp_path / "val", imagined_of=codec_dir, imagined_loss=True,
                        progress=False)
    assert res["validation_blend"] and res["imagined_loss"]
    assert abs(res["start"]["rollout_psnr_db"] - host_psnr) < 0.05  # a fresh copy of the host: the host's decode
    tuned = load_codec(tmp_path / "out")
    out = tuned.decode(zva, memory_cells=memory)
    assert torch.equal(out[..., :, :96], codec.decode(zva)[..., :, :96])  # memory half: up to its last cell centre
    right = (slice(None), slice(None), slice(None), slice(136, 224))
    before = psnr(va[..., 136:, :], tensor_to_images(codec.decode(zva)[right]))
    after = psnr(va[..., 136:, :], tensor_to_images(out[right]))
    assert after > before + 2.0
