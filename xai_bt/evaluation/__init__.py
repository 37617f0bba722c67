"""Honest numbers: metrics, calibration metrics, a bundle's temperature, evaluating a bundle, view ablation, tables, paper run."""
