"""qoqmed: multimodal clinical reasoning models (ECG, images, volumes, text) trained with DRPO."""

__version__ = "0.1.0"
