"""The one rule that turns projections into pixels (zfnet.display)."""

import pytest
import torch

from zfnet.display import (
    CAPTION,
    CLIP_PERCENTILE,
    projection_scale,
    projection_to_uint8,
    save_grid,
)


def _ring(side: int = 31) -> torch.Tensor:
    """A signed pattern (3, side, side): a bright ring on a darker disc, zero outside."""
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    r = ((yy - side // 2) ** 2 + (xx - side // 2) ** 2).float().sqrt()
    p = torch.where((r > 8) & (r < 11), 1.0, 0.0) - torch.where(r <= 8, 0.5, 0.0)
    return p.expand(3, side, side).clone()


def test_one_outlier_does_not_grey_out_the_rest() -> None:
    p = _ring()
    p[:, 0, 0] = 1000.0  # one extreme pixel, as deconvnet projections often have
    u8 = projection_to_uint8(p).int()
    nz = p[p != 0].abs()
    median = nz.median()
    at_median = u8[(p.abs() == median)]
    assert at_median.numel() and (at_median - 128).abs().min() >= 60  # far from grey
    # scaling by the largest value (the old rule) would have left it within 1 level of grey
    assert 127.5 * median / 1000 < 1
    assert (u8[:, 0, 0] == 255).all()  # the outlier saturates
    assert (u8[p == 1.0] == 255).all()  # the ring, the top of the rest, at full contrast


def test_zero_is_mid_grey_and_sign_is_kept() -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.randn(4, 3, 9, 9, generator=g)
    p[p.abs() < 0.3] = 0.0
    u8 = projection_to_uint8(p).int()
    assert (u8[p == 0] == 128).all()
    assert (u8[p > 0] > 128).all() and (u8[p < 0] < 128).all()
    # -p is the mirror image of p around grey (up to rounding)
    assert ((projection_to_uint8(-p).int() - (255 - u8)).abs() <= 1).all()


def test_each_tile_on_its_own_scale() -> None:
    g = torch.Generator().manual_seed(1)
    p = torch.randn(2, 5, 1, 6, 6, generator=g)
    q = p.clone()
    q[1, 3] *= 1e4  # one tile much stronger than the others
    a, b = projection_to_uint8(p), projection_to_uint8(q)
    assert torch.equal(a[1, 3], b[1, 3])  # display is invariant to the tile's scale
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3] = False
    assert torch.equal(a[mask], b[mask])  # and the other tiles are untouched


def test_scale_is_the_percentile_of_nonzero_magnitudes() -> None:
    g = torch.Generator().manual_seed(2)
    p = torch.randn(6, 3, 11, 11, generator=g)
    p[:, :, :4] = 0.0  # zero border: must not lower the percentile
    p[3, :, 5:] = 0.0
    for q in (CLIP_PERCENTILE, 50.0, 100.0):
        s = projection_scale(p, q)
        assert s.shape == (6, 1, 1, 1)
        for i in range(6):
            a = p[i].abs()
            want = torch.quantile(a[a > 0], q / 100)
            torch.testing.assert_close(s[i].flatten()[0], want)


def test_degenerate_tiles() -> None:
    p = torch.zeros(3, 3, 4, 4)
    p[1] = 2.5  # constant
    p[2, 0, 1, 1] = -7.0  # a single nonzero value
    p[2, 1, 2, 2] = float("nan")
    u8 = projection_to_uint8(p)
    assert (u8[0] == 128).all()  # all zero: grey, no division by zero
    assert (u8[1] == 255).all()
    assert u8[2, 0, 1, 1] == 0 and u8[2, 1, 2, 2] == 128
    assert (projection_scale(p) > 0).all() and projection_scale(p).isfinite().all()


def test_errors_and_caption(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"\(0, 100\]"):
        projection_scale(torch.ones(1, 2, 2), 0)
    with pytest.raises(ValueError, match="C, h, w"):
        projection_to_uint8(torch.ones(4, 4))
    with pytest.raises(ValueError, match="rows, columns, C, h, w"):
        save_grid(torch.ones(2, 2, 4, 5, 5), tmp_path / "g.png")  # 4 channels
    assert not (tmp_path / "g.png").exists()
    assert f"{CLIP_PERCENTILE:g}th percentile" in CAPTION and "grey" in CAPTION


def test_wrap_text_breaks_at_spaces_and_cuts_the_last_line() -> None:
    from PIL import ImageFont

    from zfnet.display import wrap_text

    font = ImageFont.load_default()
    width = font.getlength("layer3 map 33 at")
    assert wrap_text("short", width, font) == ["short"]
    lines = wrap_text("a.jpg: layer3 map 33 at (row 5, col 4)", width, font, max_lines=3)
    assert all(font.getlength(line) <= width for line in lines)
    assert " ".join(lines) == "a.jpg: layer3 map 33 at (row 5, col 4)"
    assert lines[-1] == "(row 5, col 4)"  # a position is not broken after "(row"
    cut = wrap_text("one two three four five six seven eight nine ten", width, font)
    assert len(cut) == 2 and cut[1].endswith("…")
    assert all(font.getlength(line) <= width for line in cut)


def test_a_word_wider_than_a_line_is_broken_at_its_dots_and_underscores() -> None:
    from PIL import ImageFont

    from zfnet.display import wrap_text

    font = ImageFont.load_default()
    width = font.getlength("resnet.encoder.stages.2")
    name = "convnext.encoder.stages.0.layers.0.pwconv1 map 3"
    lines = wrap_text(name, width, font, max_lines=3)
    assert all(font.getlength(line) <= width for line in lines)
    assert "".join(lines).replace(" ", "") == name.replace(" ", "")  # nothing lost
    assert lines[0].endswith(".")  # broken after a dot, not inside a part
    long = "a.jpg: " + "x" * 200
    cut = wrap_text(long, width, font, max_lines=2)
    assert len(cut) == 2 and cut[1].endswith("…")


def test_the_label_font_draws_latin_letters_past_ascii() -> None:
    """`zfnet project "my photo é.jpg"`: the panel titles drew "é" as a box (Pillow's default
    font has ASCII alone); DejaVu Sans draws it."""
    import numpy as np
    from PIL import Image, ImageDraw

    from zfnet.display import label_font

    font = label_font()

    def drawn(text: str) -> np.ndarray:
        img = Image.new("L", (40, 20))
        ImageDraw.Draw(img).text((2, 0), text, fill=255, font=font)
        return np.asarray(img)

    box = drawn("\U0010fff0")  # a character no font has: its box
    for letter in "éÅßøç":
        assert not np.array_equal(drawn(letter), box), letter
