"""A config whose text is formatted once: the runner formats the whole config with yapf (1-2 s)
for the log, the visualizer, the work dir's copy and every checkpoint's meta."""
from __future__ import annotations

import copy

from mmengine.config import Config


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
