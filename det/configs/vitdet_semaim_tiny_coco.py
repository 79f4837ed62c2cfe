# Minutes on a CPU: the bundled data/tiny_coco (registered as tiny_coco_train / tiny_coco_val),
# the demo's pretrained size (ViT-Tiny width, 4 blocks, pretrained at 96 px), 256 px LSJ and
# 64-channel heads.
from detectron2.layers import ShapeSpec

from .vitdet_semaim import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

SIZE = 256
net = model.backbone.net
net.img_size, net.pretrain_img_size = SIZE, 96
net.embed_dim, net.depth, net.num_heads, net.window_size = 192, 4, 3, 8
net.window_block_indexes = [0, 2]  # global attention in blocks 1 and 3
model.backbone.out_channels, model.backbone.square_pad = 64, SIZE
model.proposal_generator.head.in_channels = 64
model.proposal_generator.post_nms_topk = (200, 100)
heads = model.roi_heads
heads.batch_size_per_image = 64
heads.box_head.input_shape = ShapeSpec(channels=64, height=7, width=7)
heads.box_head.conv_dims, heads.box_head.fc_dims = [64, 64], [128]
heads.box_predictor.input_shape = ShapeSpec(channels=128)
heads.mask_head.input_shape = ShapeSpec(channels=64, width=14, height=14)
heads.mask_head.conv_dims = [64, 64]
heads.box_predictor.test_score_thresh = 0.001  # a briefly trained model still gets scored

dataloader.train.dataset.names = "tiny_coco_train"
dataloader.test.dataset.names = "tiny_coco_val"
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = dataloader.test.num_workers = 2

train.device = "cpu"
train.amp.enabled = False
train.ddp.fp16_compression = False
train.max_iter = 100
train.eval_period = train.checkpointer.period = 100
train.log_period = 10
train.init_checkpoint = "runs/demo/encoder.pth"  # written by the pretraining demo
train.output_dir = "output/vitdet_semaim_tiny_coco"
optimizer.lr = 2e-4
lr_multiplier.warmup_iters = 10
