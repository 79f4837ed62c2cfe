"""detectron2 glue for the SemAIM suite: ViTDet Mask R-CNN with a SemAIM-pretrained ViT."""
