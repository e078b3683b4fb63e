"""The world model: codecs, backends, and Wan2.2-TI2V-5B with the Mirage side branch.

- ``codec`` / ``refined_codec``: images <-> latents (Wan2.2 VAE, block PCA with or without a
  learned deblocking decoder, analytic thumbnail; a registry by name); ``backend``: the interface
  the node and demo drive (``readout`` needs no weights; ``mirage`` and ``shipped`` run a model).
- ``configs``, ``frame_roles``, ``side_branch``, ``transformer``, ``refiner``: the model (one per
  file); ``lora``, ``checkpoints``, ``text``, ``sampler``: weights, prompts and sampling (memory
  pinning, context noise); ``model.MirageWorldModel``: everything a rollout needs; ``rollout``:
  Algorithm 1; ``providers``: depth and masks of generated frames.

Heavy imports (diffusers, transformers, peft) happen inside those modules, not here.
"""
