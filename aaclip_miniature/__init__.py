"""The miniature world: synthetic anomaly datasets and a tiny CLIP pretrained on them.

`build_world(out, size, seed)` makes (or reuses) everything the pipeline needs in one folder;
`aaclip miniature` is its command. See `catalog` for the world's design.
"""

from aaclip_miniature.build import build_world

__all__ = ["build_world"]
