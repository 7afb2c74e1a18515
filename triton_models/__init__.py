"""The four models: a declarative spec each (registry.py), a builder each, and the
python-backend pre/post-processing that clients would otherwise rewrite."""
