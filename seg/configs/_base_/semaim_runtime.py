# What every SemAIM seg config shares: the suite's modules (registered on import) and its runner,
# whose checkpoints are written atomically.
custom_imports = dict(imports=["seg"], allow_failed_imports=False)
runner_type = "SemAIMRunner"
# A fixed seed: the same initialization, data order and augmentation on every start (mmseg's default
# draws a new seed each time). Bit-reproducible runs also need deterministic kernels: see the tiny
# CPU configs; mmseg's bilinear upsampling has no deterministic CUDA backward, so GPU runs are not.
randomness = dict(seed=0)
