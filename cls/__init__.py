"""timm glue for the SemAIM suite: ImageNet-style fine-tuning, linear probing and k-NN."""
