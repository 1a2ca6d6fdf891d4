"""One timing of VideoQualityGAN's ``Trainer.fit`` step for the sonolab tree on ``PYTHONPATH`` (a child of
``benchmarks.revisions``).

    PYTHONPATH=<tree> python benchmarks/revision_step.py <size> <steps> <flow_encoding>

Prints one JSON line: the step times after a warm-up step, the model's parameter count, the tree.
The timing is this checkout's ``benchmarks/steps.py`` (``vqa_case`` and ``lightning_times``, what ``make
bench`` times), loaded from its file so that the tree's own ``benchmarks`` package, older or absent, is
not used; the model it builds is the tree's. It uses only the constructor arguments and batch keys that
every revision since the first VideoQualityGAN accepts (sizes, ``use_zoom``, ``flow_encoding``;
``video``, ``flow``, ``gaze``, ``gaze_valid``; ``flow_color`` too, which a revision with the cached colour
flow reads and an older one ignores).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import torch

import lightning_modules


def this_checkouts_steps() -> ModuleType:
    """``benchmarks/steps.py`` next to this file, whatever ``benchmarks`` the tree on the path holds."""
    spec = importlib.util.spec_from_file_location("revision_step_steps", Path(__file__).with_name("steps.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def main() -> None:
    size, steps, flow_encoding = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    bench = this_checkouts_steps()
    case = bench.vqa_case(size, flow_encoding=flow_encoding)
    record = {
        "tree": str(Path(lightning_modules.__file__).resolve().parents[1]),
        "step_s": bench.lightning_times(case, "32-true", steps),  # the warm-up step is left out
        "parameters": sum(p.numel() for p in case.model.parameters()),
        "threads": torch.get_num_threads(),
    }
    print("REVISION_STEP " + json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
