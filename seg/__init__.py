"""mmsegmentation glue for the SemAIM suite.

Importing it (configs do, through ``custom_imports``) makes ``import mmseg.models`` work on
mmcv-lite and registers the suite's modules in mmseg's registries: the ``SemAIMViT`` backbone,
the ``SemAIMLayerDecayOptimizerConstructor``, the ``SemAIMIoUMetric`` and the ``SemAIMRunner``;
and it keeps mmengine from parsing mmseg's model index at every config load (``fast_config``)."""
from .fast_config import install as _install_fast_config
from .mmcv_compat import install as _install_mmcv_compat

_install_mmcv_compat()
_install_fast_config()

from . import backbone, engine, metrics  # noqa: E402,F401  (registration)
