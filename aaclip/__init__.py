"""AA-CLIP: anomaly-aware CLIP for zero-shot anomaly detection (CVPR 2025), reimplemented."""

__version__ = "0.1.0"
