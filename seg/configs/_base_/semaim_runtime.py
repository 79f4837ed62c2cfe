# What every SemAIM seg config shares: the suite's modules (registered on import) and its runner,
# whose checkpoints are written atomically.
custom_imports = dict(imports=["seg"], allow_failed_imports=False)
runner_type = "SemAIMRunner"
