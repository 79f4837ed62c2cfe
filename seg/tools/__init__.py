"""The mmseg entry points (train.py, test.py) as importable modules: ``python -m seg.tools.train``."""
