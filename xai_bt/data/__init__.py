"""Scans in: samples, decoding image files, dataset layouts, masks and boxes, twins (near-duplicates), splits, cache."""
