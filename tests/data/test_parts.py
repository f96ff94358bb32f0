"""Parts files (zfnet.data.parts): boxes marked on a user's images, read from JSON or CSV, the
images found in their folder, each box made a mask of its image."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zfnet.data.parts import box_mask, find_images, read_parts


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_json_and_csv_give_the_same_boxes_in_the_files_order(tmp_path) -> None:
    j = _write(tmp_path, "parts.json", '{"b.jpg": {"left eye": [10, 20, 30, 40], "nose": '
                                       '[1.5, 2, 3, 4]}, "a.jpg": {"left eye": [0, 0, 5, 5]}}')
    c = _write(tmp_path, "parts.csv", "image,part,left,top,right,bottom\n"
                                      "b.jpg, left eye, 10, 20, 30, 40\n\n"
                                      "b.jpg,nose,1.5,2,3,4\na.jpg,left eye,0,0,5,5\n")
    want = {"b.jpg": {"left eye": (10.0, 20.0, 30.0, 40.0), "nose": (1.5, 2.0, 3.0, 4.0)},
            "a.jpg": {"left eye": (0.0, 0.0, 5.0, 5.0)}}
    for path in (j, c):
        got = read_parts(path)
        assert got == want and list(got) == ["b.jpg", "a.jpg"]
    # a CSV without a header
    assert read_parts(_write(tmp_path, "bare.csv", "a.jpg,eye,0,0,5,5\n")) == {
        "a.jpg": {"eye": (0.0, 0.0, 5.0, 5.0)}}


@pytest.mark.parametrize(("name", "text", "says"), [
    ("bad.json", '{"a.jpg": {"eye": [1, 2, 3]}}', "a box is 4 numbers"),
    ("bad.json", '{"a.jpg": {"eye": [1, 2, 3, true]}}', "a box is 4 numbers"),
    ("bad.json", '{"a.jpg": {"eye": [5, 2, 3, 4]}}', "right must exceed left"),
    ("bad.json", '{"a.jpg": [1, 2, 3, 4]}', "expected an object of parts"),
    ("bad.json", '{"a.jpg": {}}', "expected an object of parts"),
    ("bad.json", '[1, 2]', "holds a JSON list"),
    ("bad.json", '{\n"a.jpg": {"eye": [1, 2, 3, 4],}\n}', "line 2: not valid JSON"),
    ("bad.csv", "a.jpg,eye,1,2,3\n", "line 1: expected 6 columns"),
    ("bad.csv", "a.jpg,eye,1,2,3,4\na.jpg,eye,1,2,3,5\n", "line 2: part 'eye' of 'a.jpg' is "
                                                          "marked again"),
    ("bad.csv", "a.jpg,eye,1,2,x,4\n", "line 1: a box is 4 numbers"),
    ("bad.csv", "a.jpg,eye,1,2,3,nan\n", "line 1: a box is 4 numbers"),
    ("bad.csv", "\n\n", "marks no part"),
])
def test_a_bad_parts_file_is_named_with_where_and_what(tmp_path, name, text, says) -> None:
    path = _write(tmp_path, name, text)
    with pytest.raises(ValueError, match="parts file") as e:
        read_parts(path)
    assert says in str(e.value) and str(path) in str(e.value)


def _coco(annotations: list[dict], images: list[dict] | None = None) -> str:
    import json

    return json.dumps({
        "info": {"description": "exported by an annotation tool"},
        "images": images or [{"id": 1, "file_name": "dogs/b.jpg", "width": 64, "height": 48},
                             {"id": 7, "file_name": "a.jpg", "width": 64, "height": 48},
                             {"id": 9, "file_name": "unmarked.jpg"}],
        "categories": [{"id": 3, "name": "left eye", "supercategory": "face"},
                       {"id": 4, "name": "nose"}],
        "annotations": annotations})


def test_coco_json_as_annotation_tools_export_it_gives_a_box_per_category(tmp_path) -> None:
    """CVAT, Label Studio, VIA and Roboflow export COCO's JSON: bbox is x, y, width, height;
    an image without annotations is not marked."""
    path = _write(tmp_path, "instances.json", _coco([
        {"id": 11, "image_id": 1, "category_id": 3, "bbox": [10, 20, 20, 20], "area": 400,
         "iscrowd": 0, "segmentation": []},
        {"id": 12, "image_id": 1, "category_id": 4, "bbox": [1.5, 2, 1.5, 2]},
        {"id": 13, "image_id": 7, "category_id": 3, "bbox": [0, 0, 5, 5]}]))
    assert read_parts(path) == {
        "dogs/b.jpg": {"left eye": (10.0, 20.0, 30.0, 40.0), "nose": (1.5, 2.0, 3.0, 4.0)},
        "a.jpg": {"left eye": (0.0, 0.0, 5.0, 5.0)}}


@pytest.mark.parametrize(("annotations", "says"), [
    ([{"id": 11, "image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5]},
      {"id": 12, "image_id": 1, "category_id": 3, "bbox": [9, 0, 5, 5]}],
     "annotations[1] (id 12): 'dogs/b.jpg' has a second 'left eye' (annotation 11 is the "
     "first); a part is one box an image: give each its own category"),
    ([{"id": 11, "image_id": 2, "category_id": 3, "bbox": [0, 0, 5, 5]}],
     "annotations[0] (id 11): image_id 2 is none of 'images' ids"),
    ([{"id": 11, "image_id": 1, "category_id": [3], "bbox": [0, 0, 5, 5]}],
     "category_id [3] is none of 'categories' ids"),
    ([{"id": 11, "image_id": 1, "category_id": 3, "segmentation": [[0, 0, 5, 0, 5, 5]]}],
     "expected a 'bbox' [x, y, width, height]; got None"),
    ([{"id": 11, "image_id": 1, "category_id": 3, "bbox": [0, 0, 0, 5]}], "is empty"),
    ({"id": 11}, "'annotations' is not a list of objects"),
])
def test_a_bad_coco_file_names_the_annotation_and_what_is_wrong(tmp_path, annotations,
                                                                 says) -> None:
    path = _write(tmp_path, "instances.json", _coco([]).replace(
        '"annotations": []', '"annotations": ' + __import__("json").dumps(annotations)))
    with pytest.raises(ValueError, match="parts file") as e:
        read_parts(path)
    assert says in str(e.value) and str(path) in str(e.value)
    bad = _write(tmp_path, "images.json", _coco([], images=[{"id": 1, "name": "a.jpg"}]))
    with pytest.raises(ValueError, match=r"images\[0\] has no 'id' and 'file_name'"):
        read_parts(bad)


def test_a_missing_parts_file_says_so(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist; expected a file of JSON"):
        read_parts(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="is a directory"):
        read_parts(tmp_path)


def test_images_are_found_by_path_or_unique_name(tmp_path) -> None:
    files = [tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg", tmp_path / "b" / "y.png"]
    boxes = {n: {"eye": (0, 0, 1, 1)} for n in ("a/x.jpg", "y.png", "b/y")}
    assert find_images(boxes, tmp_path, files, "p.json") == {
        "a/x.jpg": files[0], "y.png": files[2], "b/y": files[2]}
    with pytest.raises(ValueError, match="'x.jpg' names more than one image.*give its path"):
        find_images({"x.jpg": {}}, tmp_path, files, "p.json")
    # a path the folder does not have (a tool's export) by its file name, where it is unique
    tools = {n: {"eye": (0, 0, 1, 1)} for n in ("images/y.png", "/data/export/y", "C:\\ph\\y.png")}
    assert set(find_images(tools, tmp_path, files, "p.json").values()) == {files[2]}
    with pytest.raises(ValueError, match="'c/x.jpg' names more than one image"):
        find_images({"c/x.jpg": {}}, tmp_path, files, "p.json")
    with pytest.raises(ValueError, match=r"image 'z.jpg' is not in .* \(3 image\(s\): a/x.jpg"):
        find_images({"z.jpg": {}}, tmp_path, files, "p.json")


def test_a_box_is_a_mask_of_whole_pixels_cut_to_its_image() -> None:
    m = box_mask((2.4, 1, 5.6, 3), 4, 6)  # left, top, right, bottom
    want = torch.zeros(4, 6, dtype=torch.bool)
    want[1:3, 2:6] = True
    assert torch.equal(m, want)
    assert box_mask((-5, -5, 2, 2), 4, 6).sum() == 4  # cut to the image
    with pytest.raises(ValueError, match="lies outside the 6x4 image"):
        box_mask((7, 0, 9, 2), 4, 6)
