"""CPU demo: tiny tokenizer, digit-grid images and data for end-to-end runs without downloads."""
