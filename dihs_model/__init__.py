"""dihs_model: head-budgeted transformer encoder classifiers (no Ray, no HTTP)."""
