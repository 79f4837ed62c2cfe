# Large-scale jitter (ViTDet): detectron2's COCO loaders with LSJ at the backbone's input size.
import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from det.recipe import lsj_augmentations

IMAGE_SIZE = "${model.backbone.net.img_size}"  # the detector's square input (1024 for ViTDet)

dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.mapper.augmentations = L(lsj_augmentations)(image_size=IMAGE_SIZE)
dataloader.train.mapper.image_format = "RGB"
dataloader.train.mapper.recompute_boxes = True  # boxes from the cropped masks
dataloader.train.total_batch_size = 64
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=IMAGE_SIZE, max_size=IMAGE_SIZE)]
# detectron2._C is not built here: plain pycocotools evaluation; results land in the output dir
dataloader.evaluator.use_fast_impl = False
dataloader.evaluator.output_dir = "${...train.output_dir}"
