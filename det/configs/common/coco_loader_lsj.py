# Large-scale jitter (ViTDet): detectron2's COCO loaders with LSJ augmentation at IMAGE_SIZE.
import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L

IMAGE_SIZE = 1024

dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.ResizeScale)(min_scale=0.1, max_scale=2.0, target_height=IMAGE_SIZE, target_width=IMAGE_SIZE),
    L(T.FixedSizeCrop)(crop_size=(IMAGE_SIZE, IMAGE_SIZE), pad=False),
]
dataloader.train.mapper.image_format = "RGB"
dataloader.train.mapper.recompute_boxes = True  # boxes from the cropped masks
dataloader.train.total_batch_size = 64
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=IMAGE_SIZE, max_size=IMAGE_SIZE)]
# detectron2._C is not built here: plain pycocotools evaluation; results land in the output dir
dataloader.evaluator.use_fast_impl = False
dataloader.evaluator.output_dir = "${...train.output_dir}"
