"""The embedded dataset generator: a tool of its own (``python -m embedded``), not shared core logic.

Stages never import it: they read the datasets it writes, through their on-disk formats and the
metadata file beside them, exactly as they read a user's ImageNet, VOC or COCO."""
