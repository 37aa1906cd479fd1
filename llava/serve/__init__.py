"""Terminal chat about an image."""
