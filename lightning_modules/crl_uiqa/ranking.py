"""Pick the best plane: rank the frames of a clip, or a list of images, by a trained quality scorer.

The use the paper motivates (Sec. 1): among frames that all show the right anatomy, keep the one with the best
perceptual quality. Frames are read and resized exactly as the DataModules do (grey or RGB, ``[-1, 1]``,
INTER_AREA), scored in batches, and returned best first.

Command line::

    python -m lightning_modules.crl_uiqa.ranking --checkpoint runs/.../last.ckpt \\
        --video scan.mp4 --start 100 --end 160 [--step 2] [--out ranking.csv]
    python -m lightning_modules.crl_uiqa.ranking --checkpoint last.ckpt --images a.png b.png c.png
"""

from __future__ import annotations

import argparse
import csv
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from datamodules.base import as_hw, to_unit_range
from datamodules.readers import VideoReader, read_image

__all__ = ["FrameRanking", "load_scorer", "main", "rank_clip", "rank_frames", "rank_images", "score_batches"]

Scorer = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class FrameRanking:
    """Scores of a set of frames and their order, best first.

    Attributes:
        scores: score of each frame in the input order (float32, CPU).
        order: input positions sorted by decreasing score (ties keep the input order).
        names: one label per input frame (frame index in the video, or image path).
    """

    scores: torch.Tensor
    order: list[int]
    names: list[str]

    @property
    def best_index(self) -> int:
        """Position of the best frame in the input."""
        return self.order[0]

    @property
    def best_name(self) -> str:
        """Frame index / path of the best frame."""
        return self.names[self.best_index]

    @property
    def best_score(self) -> float:
        return float(self.scores[self.best_index])

    def rows(self) -> list[dict[str, object]]:
        """``rank, frame, score`` rows, best first (rank 1 = best)."""
        return [
            {"rank": r + 1, "frame": self.names[i], "score": float(self.scores[i])}
            for r, i in enumerate(self.order)
        ]


def score_batches(scorer: Scorer, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """``scorer`` over ``images`` (``N×C×H×W``) in batches, without gradients; ``N`` float32 scores on the CPU.

    An ``nn.Module`` scorer is run in ``eval`` mode on its own device and restored to its previous mode.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be N×C×H×W, got shape {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    module = scorer if isinstance(scorer, torch.nn.Module) else None
    was_training = module.training if module is not None else False
    params = list(module.parameters()) if module is not None else []
    device = params[0].device if params else None
    if module is not None:
        module.eval()
    out = []
    try:
        with torch.inference_mode():
            for start in range(0, images.shape[0], batch_size):
                chunk = images[start : start + batch_size]
                if device is not None:
                    chunk = chunk.to(device)
                scores = torch.as_tensor(scorer(chunk)).reshape(-1)
                if scores.numel() != chunk.shape[0]:
                    raise ValueError(
                        f"the scorer returned {scores.numel()} scores for {chunk.shape[0]} images"
                    )
                out.append(scores.float().cpu())
    finally:
        if module is not None:
            module.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def rank_frames(
    scorer: Scorer, frames: torch.Tensor, names: Sequence[str] | None = None, batch_size: int = 64
) -> FrameRanking:
    """Rank ``frames`` (``N×C×H×W`` in ``[-1, 1]``, as the model was trained on) by score, best first."""
    if frames.shape[0] == 0:
        raise ValueError("no frames to rank")
    scores = score_batches(scorer, frames, batch_size)
    labels = [str(n) for n in names] if names is not None else [str(i) for i in range(frames.shape[0])]
    if len(labels) != frames.shape[0]:
        raise ValueError(f"{len(labels)} names for {frames.shape[0]} frames")
    order = sorted(range(len(labels)), key=lambda i: (-float(scores[i]), i))
    return FrameRanking(scores=scores, order=order, names=labels)


def _as_model_input(uint8_hwc: torch.Tensor) -> torch.Tensor:
    return to_unit_range(uint8_hwc.permute(0, 3, 1, 2).contiguous())


def rank_images(
    scorer: Scorer,
    paths: Sequence[str | os.PathLike],
    image_size: int | Sequence[int],
    channels: int = 1,
    batch_size: int = 64,
) -> FrameRanking:
    """Read image files (any OpenCV format) at the model's size and rank them."""
    if not paths:
        raise ValueError("no images to rank")
    hw = as_hw(image_size if isinstance(image_size, int) else list(image_size))
    arrays = [torch.from_numpy(read_image(p, channels=channels, size=hw)) for p in paths]
    return rank_frames(scorer, _as_model_input(torch.stack(arrays)), [str(p) for p in paths], batch_size)


def rank_clip(
    scorer: Scorer,
    video: str | os.PathLike,
    start_frame: int,
    end_frame: int,
    image_size: int | Sequence[int],
    channels: int = 1,
    step: int = 1,
    batch_size: int = 64,
) -> FrameRanking:
    """Rank the frames ``start_frame, start_frame + step, ... < end_frame`` of a video; names are frame indices."""
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    if not 0 <= start_frame < end_frame:
        raise ValueError(f"need 0 <= start_frame < end_frame, got {start_frame}, {end_frame}")
    hw = as_hw(image_size if isinstance(image_size, int) else list(image_size))
    indices = list(range(start_frame, end_frame, step))
    with VideoReader(video) as reader:
        frames = torch.from_numpy(reader.read(indices, size=hw, channels=channels))
    return rank_frames(scorer, _as_model_input(frames), [str(i) for i in indices], batch_size)


def load_scorer(checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """A trained :class:`~.module.CRLUIQA` from its Lightning checkpoint, in ``eval`` mode on ``device``."""
    from lightning_modules.common.checkpoints import load_module
    from lightning_modules.crl_uiqa.module import CRLUIQA

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    # The weights come from the checkpoint: the files that initialised training (backbone weights, embedding
    # model) are not needed, and may no longer exist, to score.
    model = load_module(
        CRLUIQA,
        path,
        map_location=device,
        pretrained_path=None,
        embedding="random",
        init_from_embedding=False,
    )
    return model.eval()


def main(argv: Sequence[str] | None = None) -> FrameRanking:
    """``python -m lightning_modules.crl_uiqa.ranking``: print (and optionally save) the ranking, best first."""
    ap = argparse.ArgumentParser(description="Rank frames or images by CRL-UIQA quality score")
    ap.add_argument("--checkpoint", required=True, help="CRLUIQA Lightning checkpoint")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", nargs="+", help="image files to rank")
    src.add_argument("--video", help="video file whose frames [--start, --end) are ranked")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument(
        "--end", type=int, default=None, help="end frame (exclusive; default: the last frame + 1)"
    )
    ap.add_argument("--step", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None, help="CSV file for rank, frame, score")
    args = ap.parse_args(argv)
    model = load_scorer(args.checkpoint, args.device)
    hp = cast(Any, model).hparams
    size, channels = hp.image_size, hp.in_channels
    if args.images:
        ranking = rank_images(model, args.images, size, channels, args.batch_size)
    else:
        end = args.end
        if end is None:
            with VideoReader(args.video) as reader:
                end = reader.info.frame_count
        ranking = rank_clip(model, args.video, args.start, end, size, channels, args.step, args.batch_size)
    rows = ranking.rows()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["rank", "frame", "score"])
            writer.writeheader()
            writer.writerows(rows)
    for row in rows[:10]:
        print(f"{row['rank']:>4}  {row['frame']}  {row['score']:.4f}")
    print(f"best: {ranking.best_name} (score {ranking.best_score:.4f})")
    return ranking


if __name__ == "__main__":
    main()
