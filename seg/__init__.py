"""mmsegmentation glue for the SemAIM suite.

Importing it (configs do, through ``custom_imports``) registers the suite's modules in mmseg's
registries: the ``SemAIMViT`` backbone, the ``SemAIMLayerDecayOptimizerConstructor``, the
``SemAIMIoUMetric`` and ``SemAIMDepthMetric``, the linear depth protocol's parts (``seg.depth``) and
the ``SemAIMRunner``. That needs ``import mmseg.models``, which fails on
mmcv-lite (no compiled ops): where the ops are missing, ``mmcv_compat`` first puts a light
``mmcv.ops`` in their place; with a full mmcv it does nothing. Nothing else happens at import: the
runner routes mmengine's checkpoint reads to the safe reader when it is built."""
from .mmcv_compat import install as _install_mmcv_compat

_install_mmcv_compat()

from . import backbone, depth, engine, metrics  # noqa: E402,F401  (registration)
