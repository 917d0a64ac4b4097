"""The miniature world: synthetic anomaly datasets and a tiny CLIP pretrained on them.

`build_world(out, size, seed)` makes (or reuses) everything the pipeline needs in one folder;
`aaclip miniature` is its command, and `world_for(cfg)` builds the world a miniature profile
reads. See `catalog` for the world's design.
"""

from aaclip_miniature.build import build_world, world_for

__all__ = ["build_world", "world_for"]
