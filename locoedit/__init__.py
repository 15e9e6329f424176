"""locoedit: find where a text-to-image diffusion model stores a concept, and edit it in closed form."""

__version__ = "0.1.0"
