"""mmengine's config handling without its repeated work, which takes a third of a short CPU run.

- Every ``mmseg::`` base in a config makes mmengine parse mmseg's whole model index (about 200
  YAML metafiles, 2 s) to learn that a ``_base_`` file is not a released model. The parsed files
  are kept per process, keyed by path, size and modification time, so a changed file is read again.
- The runner formats the whole config with yapf (1-2 s) for the log, the visualizer, the work
  dir's copy and every checkpoint's meta. ``FormattedOnceConfig`` formats each distinct content once.
"""
from __future__ import annotations

import copy
import os

import mmengine.config.utils as config_utils
from mmengine.config import Config

_parsed: dict = {}
_load = config_utils.load


def _load_once(path, *args, **kwargs):
    if args or kwargs or not isinstance(path, str) or not os.path.isfile(path):
        return _load(path, *args, **kwargs)
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _parsed:
        _parsed[key] = _load(path)
    return copy.deepcopy(_parsed[key])


def install():
    config_utils.load = _load_once


class FormattedOnceConfig(Config):
    """A ``Config`` whose ``pretty_text`` is formatted once per distinct content."""

    @property
    def pretty_text(self) -> str:
        key = repr(self._cfg_dict)
        cached = self.__dict__.get("_formatted")
        if cached is None or cached[0] != key:
            cached = (key, Config.pretty_text.fget(self))
            object.__setattr__(self, "_formatted", cached)  # Config.__setattr__ would store it as a setting
        return cached[1]

    @classmethod
    def of(cls, cfg: Config) -> FormattedOnceConfig:
        out = cls.__new__(cls)
        out.__dict__.update(copy.copy(cfg).__dict__)
        return out
