"""Run a W&B sweep file: with W&B (a sweep on the server and an agent), or locally without any server.

A sweep file (``configs/sweeps/*.yaml``) is W&B's own sweep configuration: ``method`` (grid / random /
bayes), ``parameters`` (``values``, ``value`` or a distribution) and a ``command`` that runs the installed
``lightning`` CLI with ``${args}``, so every sampled ``--model.init_args.x=value`` is exactly what the CLI
parses. One extra top-level key, ``sonolab``, holds what ``collate`` needs to lay the study out as the
paper's table; it is removed before the file reaches W&B.

* **Online** (a W&B key and ``WANDB_MODE`` not offline/disabled, or ``--online``): ``wandb sweep`` creates
  the sweep, ``wandb agent`` runs ``--count`` of its runs here.
* **Local** (no key; an air-gapped cluster; ``--local``): the grid, or ``--count`` random samples of the
  parameter spec (``bayes`` is sampled at random: there is no server to model the results), run one after
  another or ``--parallel`` at a time, each its own run (``--run_id <sweep>-<index>``) logged offline to W&B
  in the group ``<sweep name>``. The argument list of each run is what a W&B agent would build. Rerunning
  the command skips finished samples and resumes a killed one from its ``last.ckpt``.

Usage::

    python -m lightning_modules.sweep configs/sweeps/vqa_table1.yaml                 # local unless a key
    python -m lightning_modules.sweep configs/sweeps/crl_weights.yaml --count 8 --parallel 2 \\
        -- --config configs/crl_uiqa/demo.yaml                                      # extra args, every run
    python -m lightning_modules.collate configs/sweeps/vqa_table1.yaml              # the table
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import random
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Sample", "agent_args", "draw_samples", "load_sweep", "main", "sample_command"]

SONOLAB_KEY = "sonolab"
MARKER = "sweep.json"
DEFAULT_ROOT = "runs"


@dataclass
class Sample:
    """One run of a sweep: its index, the sampled parameters and the CLI argument list (after the program)."""

    index: int
    params: dict[str, Any]
    args: list[str]

    def run_id(self, sweep: str) -> str:
        digest = hashlib.sha256(json.dumps(self.params, sort_keys=True, default=str).encode()).hexdigest()[:6]
        return f"{sweep}-{self.index:03d}-{digest}"


def load_sweep(path: str | Path) -> dict[str, Any]:
    """The sweep file, checked: a name, a method W&B knows, parameters, and a command with ``${args}``."""
    path = Path(path)
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict):
        raise SystemExit(f"{path}: not a sweep configuration (a YAML mapping)")
    problems = []
    if spec.get("method") not in ("grid", "random", "bayes"):
        problems.append(f"method must be grid, random or bayes, got {spec.get('method')!r}")
    if not isinstance(spec.get("parameters"), dict) or not spec["parameters"]:
        problems.append(
            "parameters: a mapping of CLI keys (model.init_args.x, config, ...) to values is missing"
        )
    command = spec.get("command")
    if not isinstance(command, list) or "${args}" not in command:
        problems.append("command: a list that runs the lightning CLI and contains ${args} is missing")
    if problems:
        raise SystemExit(f"{path}: " + "; ".join(problems))
    spec.setdefault("name", path.stem)
    return spec


def _values(name: str, spec: dict[str, Any]) -> list[Any]:
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    raise SystemExit(f"parameter {name}: a grid needs `values` or `value` (got {sorted(spec)})")


def _draw(name: str, spec: dict[str, Any], rng: random.Random) -> Any:
    """One value of a parameter, as W&B's random search draws it (the common distributions)."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return rng.choice(list(spec["values"]))
    kind = spec.get("distribution", "uniform" if isinstance(spec.get("min"), float) else "int_uniform")
    if kind == "normal":
        return rng.gauss(float(spec.get("mu", 0.0)), float(spec.get("sigma", 1.0)))
    lo, hi = spec.get("min"), spec.get("max")
    if lo is None or hi is None:
        raise SystemExit(f"parameter {name}: a {kind} distribution needs min and max, got {dict(spec)}")
    if kind == "int_uniform":
        return rng.randint(int(lo), int(hi))
    if kind == "uniform":
        return rng.uniform(float(lo), float(hi))
    if kind == "log_uniform_values":
        return math.exp(rng.uniform(math.log(float(lo)), math.log(float(hi))))
    if kind == "q_uniform":
        q = float(spec.get("q", 1.0))
        return round(rng.uniform(float(lo), float(hi)) / q) * q
    raise SystemExit(f"parameter {name}: distribution {kind!r} is not supported by the local runner")


def draw_samples(spec: dict[str, Any], count: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The grid (every combination, in file order), or ``count`` random draws (seeded) of the parameters."""
    params = spec["parameters"]
    if spec["method"] == "grid":
        names = list(params)
        grid = [
            dict(zip(names, combo, strict=True))
            for combo in itertools.product(*(_values(n, params[n]) for n in names))
        ]
        return grid[:count] if count else grid
    if not count:
        raise SystemExit(f"sweep {spec['name']}: method {spec['method']} needs --count (how many runs)")
    rng = random.Random(seed)
    return [{name: _draw(name, p, rng) for name, p in params.items()} for _ in range(count)]


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def agent_args(params: dict[str, Any]) -> list[str]:
    """``${args}`` as a W&B agent expands it: ``--<name>=<value>`` for each parameter."""
    return [f"--{name}={_format(value)}" for name, value in params.items()]


def with_extra(spec: dict[str, Any], extra: Sequence[str]) -> dict[str, Any]:
    """The sweep with ``extra`` CLI arguments inserted right before ``${args}``: an overlay given there
    (e.g. ``--config configs/vqa/demo.yaml``) comes before the sampled ones, which win where both set a key."""
    if not extra:
        return spec
    at = spec["command"].index("${args}")
    return {**spec, "command": [*spec["command"][:at], *extra, *spec["command"][at:]]}


def sample_command(spec: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """The sweep's ``command`` with W&B's macros expanded; ``lightning`` is the one next to this Python."""
    out: list[str] = []
    for item in spec["command"]:
        if item == "${env}":
            continue
        if item == "${interpreter}":
            out.append(sys.executable)
        elif item == "${program}":
            out.append(str(spec.get("program", "lightning")))
        elif item == "${args}":
            out.extend(agent_args(params))
        elif item == "${args_no_hyphens}":
            out.extend(a[2:] for a in agent_args(params))
        else:
            out.append(str(item))
    if out and out[0] in ("lightning", "sonolab"):
        script = Path(sys.executable).with_name(out[0])
        out[0] = str(script) if script.is_file() else out[0]
    return out


def _root(extra: Sequence[str]) -> Path:
    for arg in reversed(list(extra)):
        if arg.startswith("--trainer.default_root_dir="):
            return Path(arg.split("=", 1)[1])
    return Path(DEFAULT_ROOT)


def _find_run(root: Path, run_id: str) -> Path | None:
    return next(iter(root.glob(f"*/{run_id}")), None)


def run_local(
    spec: dict[str, Any], extra: Sequence[str], count: int | None, parallel: int, seed: int
) -> list[dict[str, Any]]:
    """Run every sample that has not finished; returns one status record per sample."""
    name = spec["name"]
    root = _root(extra)
    full = with_extra(spec, extra)
    samples = [Sample(i, p, sample_command(full, p)) for i, p in enumerate(draw_samples(spec, count, seed))]
    env = dict(os.environ, WANDB_RUN_GROUP=name)
    env.setdefault("WANDB_MODE", "offline")

    def one(sample: Sample) -> dict[str, Any]:
        run_id = sample.run_id(name)
        folder = _find_run(root, run_id)
        marker = folder / MARKER if folder is not None else None
        if (
            marker is not None
            and marker.is_file()
            and json.loads(marker.read_text()).get("status") == "finished"
        ):
            print(f"[{name}] {run_id}: finished earlier, skipped", flush=True)
            return {"run_id": run_id, "status": "skipped", "folder": str(folder)}
        last = folder / "checkpoints" / "last.ckpt" if folder is not None else None
        resume = [f"--ckpt_path={last}"] if last is not None and last.is_file() else [f"--run_id={run_id}"]
        command = [*sample.args, *resume]
        print(f"[{name}] {run_id}: {shlex.join(command)}", flush=True)
        proc = subprocess.run(command, env=env)
        folder = _find_run(root, run_id)
        status = "finished" if proc.returncode == 0 else f"failed ({proc.returncode})"
        record = {
            "sweep": name,
            "index": sample.index,
            "params": sample.params,
            "status": status,
            "args": command,
        }
        if folder is not None:
            (folder / MARKER).write_text(json.dumps(record, indent=2, default=str))
        return {"run_id": run_id, "status": status, "folder": str(folder) if folder else None}

    if parallel > 1:
        with ThreadPoolExecutor(parallel) as pool:
            results = list(pool.map(one, samples))
    else:
        results = [one(s) for s in samples]
    failed = [r for r in results if r["status"].startswith("failed")]
    print(
        f"[{name}] {len(results) - len(failed)} of {len(results)} runs done; failed: {[r['run_id'] for r in failed]}"
    )
    return results


def run_online(spec: dict[str, Any], extra: Sequence[str], count: int | None, project: str | None) -> None:
    """``wandb sweep`` (the file without its ``sonolab`` key, ``extra`` in its command), then ``wandb agent``."""
    server_spec = {k: v for k, v in with_extra(spec, extra).items() if k != SONOLAB_KEY}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        yaml.safe_dump(server_spec, handle)
    create = ["wandb", "sweep", *(["--project", project] if project else []), handle.name]
    out = subprocess.run(create, capture_output=True, text=True, check=True)
    words = (out.stdout + out.stderr).split()
    sweep_id = next((w for i, w in enumerate(words) if i and words[i - 1] == "agent"), None)
    if sweep_id is None:
        raise SystemExit(f"wandb sweep gave no sweep id:\n{out.stdout}\n{out.stderr}")
    subprocess.run(["wandb", "agent", *(["--count", str(count)] if count else []), sweep_id], check=True)


def _online_by_default() -> bool:
    from lightning_modules.cli import has_wandb_key

    return has_wandb_key() and os.environ.get("WANDB_MODE", "").lower() not in (
        "offline",
        "disabled",
        "dryrun",
    )


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="a sweep file, e.g. configs/sweeps/vqa_table1.yaml")
    parser.add_argument("--count", type=int, default=None, help="runs to do (random/bayes: required)")
    parser.add_argument("--parallel", type=int, default=1, help="local runs at a time (each its own process)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the local random draws")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="run here without a W&B server")
    where.add_argument("--online", action="store_true", help="create the sweep on W&B and run an agent")
    parser.add_argument("--project", default=None, help="W&B project of an online sweep")
    parser.add_argument("--dry-run", action="store_true", help="print each run's command and stop")
    parser.epilog = (
        "Arguments after -- go into every run's command, before the sampled ones "
        "(e.g. -- --config configs/vqa/demo.yaml)."
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args, extra = parser.parse_args(argv[:cut]), argv[cut + 1 :]
    spec = load_sweep(args.sweep)
    if args.dry_run:
        for i, params in enumerate(draw_samples(spec, args.count, args.seed)):
            sample = Sample(i, params, sample_command(with_extra(spec, extra), params))
            print(shlex.join([*sample.args, f"--run_id={sample.run_id(spec['name'])}"]))
        return None
    if args.online or (not args.local and _online_by_default()):
        run_online(spec, extra, args.count, args.project)
        return None
    results = run_local(spec, extra, args.count, args.parallel, args.seed)
    if any(r["status"].startswith("failed") for r in results):
        raise SystemExit(1)
    return results


if __name__ == "__main__":
    main()
