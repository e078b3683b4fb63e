"""The world model: codecs, backends, and Wan2.2-TI2V-5B with the Mirage side branch.

- ``codec``: images <-> latents (Wan2.2 VAE | analytic thumbnail); ``backend``: the interface the
  node and demo drive (``readout`` needs no weights; ``mirage`` is registered by ``rollout``).
- ``configs``, ``frame_roles``, ``side_branch``, ``transformer``: the model (one per file);
  ``lora``, ``checkpoints``, ``text``, ``sampler``: weights, prompts and sampling;
  ``model.MirageWorldModel``: everything a rollout needs; ``rollout``: Algorithm 1.

Heavy imports (diffusers, transformers, peft) happen inside those modules, not here.
"""
