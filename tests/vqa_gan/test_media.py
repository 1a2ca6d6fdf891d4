"""The GAN's reconstruction figure and clips: what the model sees, makes and predicts, titled, as files."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from PIL import Image

from callbacks.vqa_media import ReconstructionStrips
from lightning_modules.vqa_gan.module import VideoQualityGAN

S, T = 32, 4


def test_reconstruction_views_and_their_figure_and_clips(tmp_path):
    torch.manual_seed(0)
    model = VideoQualityGAN(
        image_size=S,
        in_channels=1,
        num_frames=T,
        use_zoom=False,
        ngf=4,
        max_channels=8,
        feature_dim=16,
        ndf=4,
    ).eval()
    gaze = torch.rand(3, 1, T, S, S)
    batch = {
        "video": torch.rand(3, 1, T, S, S) * 2 - 1,
        "flow": torch.zeros(3, 2, T, S, S),
        "gaze": gaze / gaze.sum(dim=(-2, -1), keepdim=True),
    }
    views = model.reconstruction_views(batch)
    assert set(views) == {"input", "reconstruction", "gaze", "gaze_prediction"}
    assert views["reconstruction"].shape == views["input"].shape == (3, 1, T, S, S)
    torch.testing.assert_close(views["input"], batch["video"])  # no zoom: the clip itself

    callback = ReconstructionStrips(num_items=2, num_clips=1, every_n_epochs=1)
    trainer = SimpleNamespace(
        is_global_zero=True,
        sanity_checking=False,
        current_epoch=0,
        global_step=0,
        logger=None,
        default_root_dir=str(tmp_path),
    )
    callback.on_validation_batch_end(trainer, model, None, batch, 0)
    callback.on_validation_epoch_end(trainer, model)
    assert (tmp_path / "figures" / "val_reconstructions.png").is_file()
    gif = Image.open(tmp_path / "figures" / "val_clip0.gif")
    assert gif.n_frames == T and gif.size == (2 * S, S), "input | reconstruction, one frame per clip frame"
