#!/usr/bin/env python
"""One full SemAIM training step, sorted vs dense attention, measured in the same run.

    python tools/benchmark_pretrain.py --model semaim_vit_base_patch16 --batch 128 --dtype bf16 [--compile]
"""
from semaim_core.errors import command
from tools.lib.pretrain_benchmark import main

if __name__ == "__main__":
    command(main)()
