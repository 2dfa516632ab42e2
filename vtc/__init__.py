"""vtc: static-budget visual token compression for exported vision models."""

__version__ = "0.1.0"
