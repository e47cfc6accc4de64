"""lmlab: from the theory of language models to practice.

Importing the package is cheap on purpose: torch, tokenizers and friends are
imported inside the functions that need them, so `lmlab --help` stays fast.
"""

__version__ = "0.1.0"
