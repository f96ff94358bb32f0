"""Parts files (zfnet.data.parts): boxes marked on a user's images, read from JSON or CSV, the
images found in their folder, each box made a mask of its image."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zfnet.data.parts import find_images, part_mask, read_parts


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
    ("bad.json", '{"a.jpg": {"eye": [[1, 2], [3, 4]]}}', "an outline is a list of 3 [x, y] "
                                                         "points or more"),
    ("bad.json", '{"a.jpg": {"eye": [[1, 2], [3, 4], [5]]}}', "an outline is a list of 3"),
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
     "first); a part is one region an image: give each its own category"),
    ([{"id": 11, "image_id": 2, "category_id": 3, "bbox": [0, 0, 5, 5]}],
     "annotations[0] (id 11): image_id 2 is none of 'images' ids"),
    ([{"id": 11, "image_id": 1, "category_id": [3], "bbox": [0, 0, 5, 5]}],
     "category_id [3] is none of 'categories' ids"),
    ([{"id": 11, "image_id": 1, "category_id": 3, "segmentation": []}],
     "expected a polygon 'segmentation' or a 'bbox' [x, y, width, height]; got bbox None"),
    ([{"id": 11, "image_id": 1, "category_id": 3, "segmentation": [[0, 0, 5, 0]],
       "bbox": [0, 0, 5, 5]}], "a polygon of 'segmentation' is a list of x, y numbers, 3 "
                               "points or more"),
    ([{"id": 11, "image_id": 1, "category_id": 3, "segmentation": [[0, 0, 5, 0, 5, "x"]]}],
     "a polygon of 'segmentation' is a list of x, y numbers"),
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


def test_outlines_from_json_and_from_coco_polygons(tmp_path) -> None:
    """A part outlined: a list of [x, y] points in zfnet's JSON, COCO's polygon
    `segmentation` (one or more polygons, flat x, y lists; its bbox then not needed); a brush's
    run-length code is read by its bbox."""
    from zfnet.data.parts import Outline

    j = _write(tmp_path, "parts.json", '{"a.jpg": {"nose": [[2, 1], [6, 1], [2, 5]], '
                                       '"eye": [0, 0, 2, 2]}}')
    assert read_parts(j) == {"a.jpg": {"nose": Outline((((2, 1), (6, 1), (2, 5)),)),
                                       "eye": (0.0, 0.0, 2.0, 2.0)}}
    path = _write(tmp_path, "instances.json", _coco([
        {"id": 11, "image_id": 1, "category_id": 3, "bbox": [0, 0, 9, 9],
         "segmentation": [[2, 1, 6, 1, 2, 5], [10, 10, 12, 10, 12, 12]]},
        {"id": 12, "image_id": 7, "category_id": 3, "segmentation": [[0, 0, 4, 0, 0, 4]]},
        {"id": 13, "image_id": 7, "category_id": 4, "bbox": [1, 2, 3, 4], "iscrowd": 1,
         "segmentation": {"counts": "PPYo0", "size": [48, 64]}}]))
    assert read_parts(path) == {
        "dogs/b.jpg": {"left eye": Outline((((2, 1), (6, 1), (2, 5)),
                                            ((10, 10), (12, 10), (12, 12))))},
        "a.jpg": {"left eye": Outline((((0, 0), (4, 0), (0, 4)),)),
                  "nose": (1.0, 2.0, 4.0, 6.0)}}


def test_an_outline_is_a_mask_of_its_inside_and_edge_cut_to_its_image() -> None:
    from zfnet.data.parts import Outline

    triangle = Outline((((2, 1), (6, 1), (2, 5)),))
    m = part_mask(triangle, 8, 10)
    assert m.shape == (8, 10) and m.dtype == torch.bool
    want = torch.zeros(8, 10, dtype=torch.bool)
    for y in range(1, 6):  # rows 1..5: from x=2 to the hypotenuse x + y = 7
        want[y, 2:8 - y] = True
    assert torch.equal(m, want)
    two = part_mask(Outline((((2, 1), (6, 1), (2, 5)), ((8, 6), (9, 6), (9, 7)))), 8, 10)
    assert two.sum() == want.sum() + 3 and two[6, 9] and two[7, 9]
    assert part_mask(Outline((((-4, -4), (6, -4), (-4, 6)),)), 8, 10).sum() == 6  # cut: x + y <= 2
    with pytest.raises(ValueError, match=r"outline \(x 20 to 30, y 1 to 5\) lies outside the "
                                         "10x8 image"):
        part_mask(Outline((((20, 1), (30, 1), (20, 5)),)), 8, 10)


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
    m = part_mask((2.4, 1, 5.6, 3), 4, 6)  # left, top, right, bottom
    want = torch.zeros(4, 6, dtype=torch.bool)
    want[1:3, 2:6] = True
    assert torch.equal(m, want)
    assert part_mask((-5, -5, 2, 2), 4, 6).sum() == 4  # cut to the image
    with pytest.raises(ValueError, match="lies outside the 6x4 image"):
        part_mask((7, 0, 9, 2), 4, 6)
