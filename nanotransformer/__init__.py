"""nanotransformer: a from-scratch transformer in NumPy with explicit forward/backward passes."""
__version__ = "0.1.0"
