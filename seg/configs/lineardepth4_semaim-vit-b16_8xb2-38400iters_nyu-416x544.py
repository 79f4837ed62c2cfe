# DINOv2's "lin. 4" variant of the linear depth protocol: blocks 3, 6, 9 and 12 (indices 2, 5, 8, 11:
# dinov2/hub/depthers.py out_index for ViT-B), each with its [CLS] token, concatenated (4 x 2 x 768
# channels); everything else as lineardepth_semaim-vit-b16_8xb2-38400iters_nyu-416x544.py.
_base_ = ["./lineardepth_semaim-vit-b16_8xb2-38400iters_nyu-416x544.py"]
model = dict(backbone=dict(out_indices=[2, 5, 8, 11]),
             decode_head=dict(in_channels=[768] * 4, in_index=[0, 1, 2, 3], channels=768 * 4 * 2))
