"""pycocotools on the bundled val set: ground truth fed back as detections is a perfect score."""
import contextlib
import io

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_ground_truth_scores_ap_one(tiny_coco, iou_type):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tiny_coco / "annotations" / "instances_val2017.json"))
        dets = []
        for ann in gt.loadAnns(gt.getAnnIds(iscrowd=False)):
            det = {"image_id": ann["image_id"], "category_id": ann["category_id"], "score": 1.0}
            det["bbox" if iou_type == "bbox" else "segmentation"] = ann["bbox"] if iou_type == "bbox" else gt.annToRLE(ann)
            dets.append(det)
        ev = COCOeval(gt, gt.loadRes(dets), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert len(dets) > 300
    assert ev.stats[0] == pytest.approx(1.0)  # AP@[.5:.95]
    assert ev.stats[1] == pytest.approx(1.0)  # AP50
