# The paper's ADE20K recipe under mmseg's naming convention; upernet_semaim.py is its short name.
_base_ = ["./upernet_semaim.py"]
