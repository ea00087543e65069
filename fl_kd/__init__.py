"""fl-kd: selective knowledge distillation and label-protected vertical FL on Flower."""

__version__ = "0.1.0"
