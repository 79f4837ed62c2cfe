# DINOv2's "lin. 4" variant of the linear protocol: the last 4 blocks' patch tokens, each through
# the encoder's final norm, concatenated (4 x 768 channels) before the BatchNorm and the 1 x 1 conv
# (DINOv3's backbone_out_layers FOUR_LAST); everything else as linear_semaim-vit-b16_8xb2-40k_ade20k-512x512.py.
_base_ = ["./linear_semaim-vit-b16_8xb2-40k_ade20k-512x512.py"]
model = dict(backbone=dict(out_indices=[8, 9, 10, 11]),
             decode_head=dict(in_channels=[768] * 4, in_index=[0, 1, 2, 3], channels=768 * 4))
