"""VideoQualityGAN's training step of two or more git revisions side by side: is this checkout faster
than an earlier one, on this machine?

    python -m benchmarks.revisions 2572445 .            # an earlier commit against the working tree
    python -m benchmarks.revisions v0.1 HEAD . --size published --flow raw --steps 5 --rounds 3

Each revision is checked out once into a temporary ``git worktree`` (``.`` is this working tree, with
its uncommitted changes) and timed in a fresh process (``benchmarks/revision_step.py`` with that tree on
``PYTHONPATH``): ``Trainer.fit`` on the same seeded clips, fp32, ``--steps`` steps after a warm-up step.
The revisions alternate, ``--rounds`` times, so a change in the machine's load falls on all of them; the
medians and each revision's ratio to the first are printed and written to ``--out``. The step is the
same network for every revision (the parameter counts are checked equal), so the ratio is the speed of
the code around and inside it. Differences between machines cancel out of the ratio, not out of the
seconds: this is how a figure measured on another machine is carried to this one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.run import machine

REPO = Path(__file__).resolve().parents[1]
STEP_SCRIPT = Path(__file__).with_name("revision_step.py")
WORKING_TREE = "."


def checkout(revision: str, into: Path) -> Path:
    """A tree holding ``revision`` (this checkout itself for ``.``); a clear error for an unknown one."""
    if revision == WORKING_TREE:
        return REPO
    target = into / revision.replace("/", "_")
    proc = subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "--force", str(target), revision],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"cannot check out revision {revision!r} of {REPO}: {proc.stderr.strip()}")
    return target


def time_tree(tree: Path, size: str, steps: int, flow: str, timeout: float) -> dict[str, Any]:
    """One child process timing the step of the sonolab code in ``tree``."""
    env = dict(os.environ, PYTHONPATH=str(tree), WANDB_MODE="disabled")
    proc = subprocess.run(
        [sys.executable, str(STEP_SCRIPT), size, str(steps), flow],
        cwd=tempfile.gettempdir(),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("REVISION_STEP ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"timing the step of {tree} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    record = json.loads(lines[-1].removeprefix("REVISION_STEP "))
    if Path(record["tree"]).resolve() != tree.resolve():
        raise SystemExit(f"the child imported sonolab from {record['tree']}, not from {tree}")
    return record


def compare(
    revisions: list[str], size: str, steps: int, rounds: int, flow: str, timeout: float = 1800
) -> dict[str, Any]:
    """Alternate the revisions ``rounds`` times; medians of all their steps and ratios to the first."""
    scratch = Path(tempfile.mkdtemp(prefix="sonolab-revisions-"))
    trees = {}
    try:
        trees = {rev: checkout(rev, scratch) for rev in revisions}
        times: dict[str, list[float]] = {rev: [] for rev in revisions}
        parameters: dict[str, int] = {}
        loads: list[float] = []
        for _ in range(rounds):
            for rev in revisions:
                loads.append(os.getloadavg()[0])
                record = time_tree(trees[rev], size, steps, flow, timeout)
                times[rev] += record["step_s"]
                parameters[rev] = record["parameters"]
    finally:
        for tree in trees.values():
            if tree != REPO:
                subprocess.run(
                    ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False
                )
        shutil.rmtree(scratch, ignore_errors=True)
    if len(set(parameters.values())) != 1:
        raise SystemExit(f"the revisions build different networks (parameters: {parameters}): not comparable")
    medians = {rev: statistics.median(times[rev]) for rev in revisions}
    first = medians[revisions[0]]
    return {
        "size": size,
        "flow_encoding": flow,
        "steps_per_round": steps,
        "rounds": rounds,
        "parameters": parameters[revisions[0]],
        "machine": machine(),
        "load_average_at_each_start": loads,
        "revisions": {
            rev: {"median_step_s": medians[rev], "ratio_to_first": medians[rev] / first, "step_s": times[rev]}
            for rev in revisions
        },
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "revisions", nargs="+", help="git revisions; '.' is this working tree (first: the reference)"
    )
    parser.add_argument("--size", choices=["published", "demo", "tiny"], default="published")
    parser.add_argument("--flow", choices=["raw", "color"], default="raw", help="the model's flow_encoding")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per process, after a warm-up step")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the revisions")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default: print only)")
    args = parser.parse_args(argv)
    if len(args.revisions) < 2:
        parser.error("give at least two revisions to compare")
    result = compare(args.revisions, args.size, args.steps, args.rounds, args.flow)
    print(f"VideoQualityGAN[{args.size}], flow {args.flow}, fp32, {result['parameters']:,} parameters")
    for rev, row in result["revisions"].items():
        print(
            f"  {rev:<12} median {row['median_step_s']:.3f} s/step   × {row['ratio_to_first']:.2f} of the first"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {args.out}")
    return result


if __name__ == "__main__":
    main()
