"""Dataset sources, synthetic test beds and collators."""

from .collators import FashionBertPretrainingCollator

__all__ = ["FashionBertPretrainingCollator"]
