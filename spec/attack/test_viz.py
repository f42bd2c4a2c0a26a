"""The attack figures (impl/viz.py): the seed's 4 panels show the right data; the course's TensorBoard tags."""

from __future__ import annotations

import torch
from torch import Tensor

from impl.viz import attack_figure, log_image_grids, save_attack_figures, to_pixels
from spec.attack.toys import normalize


class RecordingWriter:
    def __init__(self) -> None:
        self.images: dict[str, tuple[Tensor, int | None]] = {}

    def add_image(self, tag: str, img_tensor: Tensor, global_step: int | None = None) -> None:
        self.images[tag] = (img_tensor, global_step)


def _pair(n: int = 3, size: int = 12) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    pixels = 0.1 + 0.8 * torch.rand(n, 3, size, size, generator=g)
    delta = (torch.rand(n, 3, size, size, generator=g) - 0.5) * (16 / 255)
    return normalize(pixels), normalize(pixels + delta), delta


def test_to_pixels_inverts_the_normalization():
    pixels = torch.rand(2, 3, 5, 7)
    err = (to_pixels(normalize(pixels)) - pixels).abs().max().item()
    assert err < 1e-6, f"de-normalization error {err:.3g}"


def test_four_panels_show_original_adversarial_amplified_and_heatmap():
    images, adv, delta = _pair()
    fig = attack_figure(images[0], adv[0], "abbey", "abbey", "bakery")
    panels = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    assert len(panels) == 4, f"expected 4 image panels, got {len(panels)}"
    original, adversarial, amplified, heat = (torch.as_tensor(p.data if hasattr(p, "data") else p) for p in panels)
    expect_amp = (0.5 + 20 * delta[0]).clamp(0, 1).permute(1, 2, 0)
    expect_heat = delta[0].abs().amax(0) * 255
    checks = {
        "original": (original, to_pixels(images[0]).permute(1, 2, 0)),
        "adversarial": (adversarial, to_pixels(adv[0]).permute(1, 2, 0)),
        "amplified ×20": (amplified, expect_amp),
        "heatmap": (heat, expect_heat),
    }
    for name, (shown, expected) in checks.items():
        err = (shown.float() - expected.float()).abs().max().item()
        assert err < 1e-3 * (255 if name == "heatmap" else 1), f"{name} panel differs by {err:.3g}"
    titles = " ".join(ax.get_title() for ax in fig.axes)
    assert "abbey" in titles and "bakery" in titles, f"class names missing from titles: {titles!r}"


def test_save_attack_figures_writes_pngs_fooled_examples_first(tmp_path, monkeypatch):
    import impl.viz

    drawn = []  # the true class name each figure shows, in file order
    original = impl.viz.attack_figure
    monkeypatch.setattr(impl.viz, "attack_figure", lambda *a: (drawn.append(a[2]), original(*a))[1])
    images, adv, _ = _pair(n=4)
    labels = torch.tensor([0, 1, 2, 3])
    clean_pred = torch.tensor([0, 1, 2, 3])
    adv_pred = torch.tensor([0, 1, 0, 3])  # only example 2 is fooled
    paths = save_attack_figures(tmp_path, images, adv, labels, clean_pred, adv_pred, ["a", "b", "c", "d"], limit=2)
    assert [p.name for p in paths] == ["attack_0.png", "attack_1.png"]
    assert drawn == ["c", "a"], f"the fooled example (class c) must come first, then the rest in order: {drawn}"
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{p} is not a PNG"
    assert paths[0].stat().st_size > 10_000, "the first figure is suspiciously small"


def test_tensorboard_grids_use_the_course_tags():
    images, adv, _ = _pair(n=4)
    writer = RecordingWriter()
    assert log_image_grids(writer, 3, images, adv) == ["Image/Org_Image", "Image/Adv_Image"]
    log_image_grids(writer, 3, images)
    for tag in ("Image/Org_Image", "Image/Adv_Image", "Image/Image"):
        grid, step = writer.images[tag]
        assert step == 3 and grid.shape == (3, 16, 58), f"{tag}: shape {tuple(grid.shape)}, step {step}"
        assert grid.min() >= 0 and grid.max() <= 1, f"{tag} leaves [0, 1]"
    org, adv_grid = writer.images["Image/Org_Image"][0], writer.images["Image/Adv_Image"][0]
    assert not torch.equal(org, adv_grid), "the adversarial grid shows the originals"
