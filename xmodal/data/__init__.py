"""Dataset sources, synthetic test beds, preprocessing and collators."""

from .collators import FashionBertPretrainingCollator, MapIvrCollator

__all__ = ["FashionBertPretrainingCollator", "MapIvrCollator"]
