"""sslad: spatiotemporal self-supervised learning for Alzheimer's disease from longitudinal T1 MRI."""

__version__ = "0.1.0"
