"""YOLOX model definition (upstream module names and layout; inference only)."""
from third_party.yolox.model import YOLOX, YOLOPAFPN, YOLOXHead, build_yolox

__all__ = ["YOLOX", "YOLOPAFPN", "YOLOXHead", "build_yolox"]
