#!/usr/bin/env python
"""The GPU check's stages (tools/lib/gpu_check.py); on the device, run it through tools/gpu_check.sh.

    python tools/gpu_check.py smoke --out runs/gpu_check
"""
import sys

from semaim_core.errors import command
from tools.lib.gpu_check import main

if __name__ == "__main__":
    sys.exit(command(main)())
