"""raydet: distributed object detection on Ray (Pascal VOC in, Parquet shards, Ray Train, TFLite out)."""

__version__ = "0.1.0"
