"""Data: corpus building (corpus.py) and Wikipedia dump reading (wiki.py)."""
