"""Loading weights into the detector: a pretrained SemAIM encoder into the ViT backbone (verified),
a trained detector for evaluation (strict), atomic checkpoint writes, and exact resumes."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import HookBase
from detectron2.utils import comm

from semaim_core.layouts import describe_kind, detectron2_keys, read_encoder
from semaim_core.safe_io import CheckpointError, atomic_write, commit, load_file, refuse_address
from semaim_core.training import all_rng_states, own_rng_state, set_torch_rng_state
from semaim_core.weights import load_verified, resize_pos_embed

# A pretrained encoder has no relative-position tables (ViTDet starts them at zero); its [CLS]
# token and final norm have no place in the detector (dropped by detectron2_keys).
BACKBONE_ALLOWED_MISSING = (r"rel_pos_[hw]$",)


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def load_backbone(model, path: str) -> dict:
    """Load an encoder checkpoint (any kind semaim_core reads) into ``model.backbone.net``; fail
    if any backbone weight is missing. The position table is resized to the backbone's
    ``pretrain_img_size`` if the encoder was pretrained at another size."""
    net = unwrap(model).backbone.net
    sd, meta = read_encoder(path)
    sd = detectron2_keys(sd)
    want = net.pos_embed.shape[1] - 1
    if sd["pos_embed"].shape[1] - 1 != want:
        sd["pos_embed"] = resize_pos_embed(sd["pos_embed"], want)
    report = load_verified(net, sd, f"detectron2 ViT backbone <- {path} ({describe_kind(meta)})",
                           allowed_missing=BACKBONE_ALLOWED_MISSING)
    logging.getLogger("detectron2.det").info(
        f"loaded {report['loaded']} backbone tensors from {path}; at initialization: {report['left_at_init']}")
    # re-zero the relative-position tables, as ViTDet does for MAE weights
    for name, p in net.named_parameters():
        if name.endswith(("rel_pos_h", "rel_pos_w")):
            torch.nn.init.zeros_(p)
    return report


def load_detector(model, path: str) -> dict:
    """A trained detector (``model_final.pth``) for evaluation: every weight must match. The report
    adds ``iteration``: how many iterations the checkpoint had trained (None if it does not say)."""
    ckpt = load_file(path)
    if ckpt.get("format") in ("semaim-encoder", "semaim-train") or "blocks.0.attn.qkv.weight" in ckpt.get("model", {}):
        raise CheckpointError(f"{path} is a pretrained encoder, not a trained detector: --eval-only needs the "
                              "model_final.pth (or model_XXXXXXX.pth) that det/train_net.py wrote")
    if not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path} has no 'model' state dict: not a detectron2 checkpoint")
    report = load_verified(unwrap(model), ckpt["model"], f"detector <- {path}")
    last = ckpt.get("iteration")  # detectron2 saves the 0-based index of the last iteration run
    return dict(report, iteration=None if last is None else int(last) + 1)


class AtomicCheckpointer(DetectionCheckpointer):
    """detectron2's checkpointer, but each file is written to a temporary name and renamed, and a
    resume loads the model strictly (detectron2 would load what fits and log the rest)."""

    def last_checkpoint(self) -> str:
        """The checkpoint named in ``last_checkpoint``; an empty or dangling entry is an error."""
        tag = f"{self.save_dir}/last_checkpoint"
        name = Path(tag).read_text().strip()
        if not name:
            raise CheckpointError(f"{tag} is empty: write the name of a checkpoint of this run into it "
                                  "(e.g. model_0000999.pth), or delete it and start without --resume")
        path = f"{self.save_dir}/{name}"
        if not os.path.isfile(path):
            raise CheckpointError(f"{tag} names {name}, which does not exist in {self.save_dir}")
        return path

    def load(self, path: str, *args, **kwargs):
        refuse_address(path)  # fvcore would download it first
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename):
        """The suite's safe loader instead of fvcore's torch.load and detectron2's pickle.load (.pkl):
        a resume never runs pickled code."""
        ckpt = load_file(filename)
        return ckpt if "model" in ckpt else {"model": ckpt}

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        problems = [*incompatible.missing_keys, *incompatible.unexpected_keys,
                    *(k for k, *_ in incompatible.incorrect_shapes)]
        if problems:
            raise CheckpointError(f"the checkpoint does not fit the model ({len(problems)} weights missing, "
                                  f"unexpected or of another shape: {problems[:6]}); resume only with the config "
                                  "that wrote it")
        return incompatible

    def save(self, name: str, **kwargs) -> None:
        """fvcore's save under a temporary name, then renamed and tagged: a crash mid-write leaves
        the previous checkpoint and ``last_checkpoint`` as they were."""
        tmp = f".{name}.tmp-{os.getpid()}"
        self._tagging = False  # fvcore would name the temporary file in last_checkpoint
        try:
            super().save(tmp, **kwargs)
        finally:
            self._tagging = True
        if self.save_dir and self.save_to_disk:
            commit(f"{self.save_dir}/{tmp}.pth", f"{self.save_dir}/{name}.pth")
            self.tag_last_checkpoint(f"{name}.pth")

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if getattr(self, "_tagging", True):
            atomic_write(f"{self.save_dir}/last_checkpoint", lambda f: f.write(last_filename_basename.encode()))


class ExactResumeHook(HookBase):
    """What detectron2's resume leaves out, so that a resumed run continues exactly as the
    uninterrupted one: every rank's RNG state goes into each checkpoint (the trainer saves its
    hooks' states); on resume the data loader is advanced past the trained iterations (its
    augmentation draws replay as they were: in the loader workers, or in this process with
    num_workers=0) and then this rank's torch (and CUDA) generator, which drop path and the ROI
    sampling draw from, is restored. Register it before the PeriodicCheckpointer."""

    def __init__(self):
        self.states, self.pending = None, None

    def after_step(self):
        if comm.get_world_size() > 1:  # a collective: every rank, every step; rank 0's checkpointer saves them
            self.states = all_rng_states()

    def state_dict(self):
        return {"rng_per_rank": self.states or all_rng_states()}  # one process: its state, at the save

    def load_state_dict(self, state):
        self.pending = own_rng_state(state["rng_per_rank"])

    def before_train(self):
        if not self.pending:
            return
        start = self.trainer.start_iter
        logging.getLogger("detectron2.det").info(f"advancing the data loader by {start} iterations to resume exactly")
        batches = self.trainer._data_loader_iter
        for _ in range(start):
            next(batches)
        set_torch_rng_state(self.pending)
        self.pending = None

