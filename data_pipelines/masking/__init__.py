"""Spatiotemporal masks: multi-block 3D, random tube and future-prediction masks, drawn per batch."""

from data_pipelines.masking.generator import MaskGenerator, draw_masks, mix_seed
from data_pipelines.masking.spec import MASK_KINDS, MaskSpec, default_mask_specs

__all__ = ["MASK_KINDS", "MaskGenerator", "MaskSpec", "default_mask_specs", "draw_masks", "mix_seed"]
