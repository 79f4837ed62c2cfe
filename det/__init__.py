"""detectron2 glue for the SemAIM suite: ViTDet Mask R-CNN with a SemAIM-pretrained ViT.

detectron2 scripts a few functions with ``torch.jit.script`` when it is imported, which torch 2.10+
answers with a FutureWarning before any output of ours (a ``--help`` included): importing this
package first keeps that one warning quiet. Nothing else happens at import."""
import warnings

warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
