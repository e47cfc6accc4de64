"""Converters between lmlab and other formats (pure functions over state dicts)."""
