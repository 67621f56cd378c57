"""``qapruner compare``: the paper's experiment as a grid of configurations on the same items.

    config.py       CompareConfig: every option, from a TOML/JSON recipe and/or the command line
    grid.py         the rows (FP dense, Wq dense, FP + host, Wq + host, Wq + QA-host) and their ids
    orchestrate.py  running the grid: resumable per-config item files, one quantized model per preset
    stats.py        paired QA − host differences (exact McNemar, paired bootstrap, Holm)
    report.py       results.json, report.md (Table-1-shaped), report.html
    plots.py        accuracy vs keep, QA − host differences, the kept-token gallery

See docs/compare.md.
"""

from .config import CompareConfig, load_config_file
from .grid import Row, build_grid

__all__ = ["CompareConfig", "load_config_file", "Row", "build_grid"]
