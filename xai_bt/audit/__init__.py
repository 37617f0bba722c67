"""The focus audit: localisation against masks, faithfulness, randomisation, shortcuts, the runner, its report."""
