"""Training: arguments, data, trainer and entry point."""
