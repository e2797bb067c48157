"""Training data: one normalised row type, readers with line-level validation, converters, instructions."""
