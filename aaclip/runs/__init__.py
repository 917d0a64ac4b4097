"""AA-CLIP, runs: training, checkpoints, inference and evaluation on top of the method in `aaclip`."""
