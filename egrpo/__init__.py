"""egrpo: entropy-aware GRPO (E-GRPO) for flow-matching text-to-image models, as a pipeline."""
__version__ = "0.1.0"
