"""Drawing only (numbers in, Figure out): the project style, heatmap overlays, explanation and evaluation figures."""
