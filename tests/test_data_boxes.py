"""Masks -> boxes and boxes between original and model pixels."""

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata
from skimage.color import rgb2hed
from skimage.measure import label, regionprops

from qoqmed.data import Record, from_model_box, mask_box, mask_boxes, to_model_box
from qoqmed.data.prompts import LoadedRecord, grounding, model_boxes
from qoqmed.data.schema import Box
from qoqmed.modeling.tiny import build_tiny


@pytest.fixture(scope="module")
def processor():
    return build_tiny(["Which?"])[0]


def test_mask_boxes_per_component_pixel_edges():
    mask = np.zeros((20, 30), bool)
    mask[2:5, 3:8] = True      # rows 2..4, cols 3..7
    mask[10:12, 20:25] = True
    mask[12, 25] = True        # touches the second block only diagonally
    assert mask_boxes(mask) == [(3, 2, 8, 5), (20, 10, 26, 13)]
    assert mask_boxes(mask, connectivity=1) == [(3, 2, 8, 5), (20, 10, 25, 12), (25, 12, 26, 13)]
    assert mask_boxes(mask, connectivity=1, min_pixels=2) == [(3, 2, 8, 5), (20, 10, 25, 12)]
    assert mask_box(mask) == (3, 2, 26, 13)
    assert mask_boxes(np.zeros((4, 4))) == [] and mask_box(np.zeros((4, 4))) is None
    with pytest.raises(ValueError):
        mask_boxes(np.zeros(5))


def test_mask_boxes_on_real_histology_match_scikit_image():
    # Real immunohistochemistry slide (bundled in scikit-image): the DAB-stained regions as a mask.
    ihc = skdata.immunohistochemistry()
    dab = rgb2hed(ihc)[..., 2]
    mask = dab > np.percentile(dab, 99)
    ours = sorted(mask_boxes(mask))
    # regionprops bbox is (min_row, min_col, max_row, max_col) with exclusive max: the same pixel-edge box.
    theirs = sorted((r.bbox[1], r.bbox[0], r.bbox[3], r.bbox[2]) for r in regionprops(label(mask, connectivity=2)))
    assert len(ours) > 10 and ours == theirs


def test_model_box_round_trip(processor):
    size = (1411, 1000)  # (w, h) of an original image, resized by the processor
    mw, mh = processor.model_image_size(*size)
    assert (mw, mh) != size
    box = (100.0, 200.0, 700.0, 900.0)
    model = to_model_box(box, size, processor)
    assert all(isinstance(v, int) for v in model)
    assert model == tuple(round(v * s) for v, s in zip(box, (mw / size[0], mh / size[1]) * 2))
    back = from_model_box(model, size, processor)
    # Rounding to model pixels loses at most half a model pixel, i.e. half the scale factor in original pixels.
    assert max(abs(a - b) for a, b in zip(back, box)) <= 0.5 * max(size[0] / mw, size[1] / mh) + 1e-9


def test_prompts_use_the_same_conversion(processor, tmp_path):
    retina = Image.fromarray(skdata.retina())
    rec = Record(id="r", domain="fundus", dataset="x/fundus", problem="<image> Which?", answer="DR",
                 images=["r.png"], boxes=[Box((100, 150, 600, 800), "DR", 0)], base_dir=tmp_path)
    loaded = LoadedRecord(rec, [retina], [])
    assert model_boxes(loaded, processor) == [
        {"bbox_2d": list(to_model_box((100, 150, 600, 800), retina.size, processor)), "label": "DR"}]
    g = grounding(loaded, processor)
    assert g.image_size == retina.size and g.model_size == processor.model_image_size(*retina.size)
