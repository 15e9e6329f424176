"""Report building blocks: HTML pages, image grids, per-layer plots, and a headless-Chromium page check."""
