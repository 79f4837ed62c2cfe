# Frozen-feature linear depth on NYU Depth v2, DINOv2's "lin. 1" head on the last block with
# DINOv3's released NYU training recipe (see the model and dataset bases): batch 16 (8 GPUs x 2).
#   python -m seg.tools.train lineardepth_semaim-vit-b16_8xb2-38400iters_nyu-416x544.py \
#       --cfg-options model.backbone.checkpoint=runs/semaim_b/encoder.pth
_base_ = ["./_base_/models/lineardepth_semaim_vit-b16.py", "./_base_/datasets/nyu_416x544.py"]
