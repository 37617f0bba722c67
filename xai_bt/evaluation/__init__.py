"""Honest numbers: metrics, calibration metrics, evaluating a bundle, view ablation, paper tables and figures."""
