"""mmsegmentation glue for the SemAIM suite. Importing it makes ``import mmseg.models`` work on mmcv-lite."""
from .mmcv_compat import install as _install_mmcv_compat

_install_mmcv_compat()
