"""Labelled contact sheets (ednerf-edit's prompt sheet, the benchmarks' pictures): labels stay in their column."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ednerf_ns.tools.runs import LABEL_LINES, labelled_contact_sheet, wrap_label


def test_labels_wrap_between_words_and_are_cut_when_too_long():
    width = len  # one unit a character
    assert wrap_label("source", 10, width) == ["source"]
    assert wrap_label("a blue sphere", 10, width) == ["a blue", "sphere"]
    assert wrap_label("supercalifragilistic", 8, width) == ["superca…"]
    lines = wrap_label("a golden sphere on a gray checkered floor at dusk", 10, width)
    assert len(lines) == LABEL_LINES and all(len(line) <= 10 for line in lines)
    assert lines[:2] == ["a golden", "sphere on"] and lines[-1].endswith("…")
    assert wrap_label("", 10, width) == [""]


def test_a_long_label_stays_in_its_column(tmp_path):
    size = 48
    view = torch.full((size, size, 3), 0.5)
    long = "a very long prompt about a golden sphere on a white tiled floor in the evening"
    path = labelled_contact_sheet([[view, view]], [long, ""], tmp_path / "sheet.png", title="a title")
    image = np.asarray(Image.open(path).convert("L")).astype(int)
    top = image.shape[0] - size - 4  # the white strip above the views (contact_sheet pads by 2 px)
    assert top > 12 * 3, "three lines of label and a title"
    cell = size + 4
    first, second = image[14:top, :cell], image[14:top, cell:]
    assert (first < 128).any(), "the first label is drawn"
    assert not (second < 128).any(), "nothing of it spills into the second column"
