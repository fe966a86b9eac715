"""vivit-batch: label video datasets with ViViT on Ray, into Parquet."""

__version__ = "0.1.0"
