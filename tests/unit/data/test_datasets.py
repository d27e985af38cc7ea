"""Data sets: COCO fixtures written here (captions, polygon and RLE masks), caption folders,
class folders, and a loader that reports bad images instead of failing."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from transformer_lens_mm.data.datasets import CaptionFolder, ClassFolders, CocoDataset, image_loader


def write_coco(root):
    images = root / "images"
    images.mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((12, 10, 3), 200, np.uint8)).save(images / name)
    (images / "bad.png").write_bytes(b"not a png")
    infos = [
        {"id": 1, "file_name": "a.png", "height": 12, "width": 10},
        {"id": 2, "file_name": "b.png", "height": 12, "width": 10},
        {"id": 3, "file_name": "bad.png", "height": 12, "width": 10},
        {"id": 4, "file_name": "missing.png", "height": 12, "width": 10},
    ]
    captions = {
        "images": infos,
        "annotations": [
            {"id": 1, "image_id": 1, "caption": "A dog on the grass. "},
            {"id": 2, "image_id": 1, "caption": "a brown dog"},
            {"id": 3, "image_id": 2, "caption": "two cats"},
            {"id": 4, "image_id": 3, "caption": "broken"},
            {"id": 5, "image_id": 4, "caption": "gone"},
        ],
    }
    crowd = np.zeros((12, 10), np.uint8)
    crowd[8:11, 1:4] = 1  # 9 pixels, exactly
    rle = mask_utils.encode(np.asfortranarray(crowd))
    rle["counts"] = rle["counts"].decode("ascii")
    instances = {
        "images": infos,
        "categories": [{"id": 18, "name": "dog"}, {"id": 17, "name": "cat"}],
        "annotations": [
            {  # polygon: the square (2,2)-(6,6) in x, y
                "id": 10,
                "image_id": 1,
                "category_id": 18,
                "segmentation": [[2, 2, 6, 2, 6, 6, 2, 6]],
                "area": 16,
                "bbox": [2, 2, 4, 4],
                "iscrowd": 0,
            },
            {  # RLE (crowd) of the same category: merged into the dog mask
                "id": 11,
                "image_id": 1,
                "category_id": 18,
                "segmentation": rle,
                "area": 9,
                "bbox": [1, 8, 3, 3],
                "iscrowd": 1,
            },
            {
                "id": 12,
                "image_id": 2,
                "category_id": 17,
                "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]],
                "area": 16,
                "bbox": [0, 0, 4, 4],
                "iscrowd": 0,
            },
        ],
    }
    (root / "captions.json").write_text(json.dumps(captions))
    (root / "instances.json").write_text(json.dumps(instances))
    return root, crowd.astype(bool)


def test_coco_captions_categories_and_masks(tmp_path):
    root, crowd = write_coco(tmp_path)
    data = CocoDataset(root / "images", root / "captions.json", root / "instances.json")
    assert len(data) == 4 and [it.id for it in data] == ["1", "2", "3", "4"]
    first = data[0]
    assert first.captions == ["A dog on the grass.", "a brown dog"]
    assert first.categories == ["dog"] and data[1].categories == ["cat"]
    masks = first.masks()
    assert set(masks) == {"dog"} and masks["dog"].shape == (12, 10)
    dog = masks["dog"]
    assert dog[3:6, 3:6].all()  # inside the polygon
    outside = np.ones_like(dog)
    outside[1:8, 1:8] = False
    outside[8:11, 1:4] = False
    assert not (dog & outside).any()
    assert (dog[8:11, 0:10] == crowd[8:11, 0:10]).all()  # the RLE part, pixel-exact
    assert data[0].image().size == (10, 12)
    only = CocoDataset(root / "images", root / "captions.json", image_ids=[2])
    assert len(only) == 1 and only[0].captions == ["two cats"] and only[0].masks() == {}
    with pytest.raises(KeyError, match="not in the annotation file"):
        CocoDataset(root / "images", root / "captions.json", image_ids=[99])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CocoDataset(root / "images", root / "nope.json")


def test_loader_reports_bad_images_and_goes_on(tmp_path):
    root, _ = write_coco(tmp_path)
    data = CocoDataset(root / "images", root / "captions.json")
    batches = list(image_loader(data, lambda im: torch.tensor(np.asarray(im)), batch_size=3))
    assert [b.ids for b in batches] == [["1", "2"], []]
    assert batches[0].pixel_values.shape == (2, 12, 10, 3) and batches[1].pixel_values is None
    failures = {**batches[0].failures, **batches[1].failures}
    assert set(failures) == {"3", "4"}
    assert "cannot read" in failures["3"] and "does not exist" in failures["4"]
    assert [i for i, _, _ in batches[0].failed] == [2]
    # worker processes give the same batches
    workers = list(
        image_loader(data, lambda im: torch.tensor(np.asarray(im)), batch_size=3, num_workers=2)
    )
    assert [b.ids for b in workers] == [b.ids for b in batches]


def test_caption_folder_jsonl_csv_and_class_folders(tmp_path):
    for name in ("x.png", "y.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "captions.jsonl").write_text(
        '{"file": "x.png", "caption": "a red circle"}\n\n'
        '{"file": "x.png", "caption": "a circle", "category": "circle"}\n'
        '{"file": "y.png", "captions": ["a star", "one star"]}\n'
    )
    data = CaptionFolder(tmp_path)
    assert [(it.id, it.captions, it.categories) for it in data] == [
        ("x.png", ["a red circle", "a circle"], ["circle"]),
        ("y.png", ["a star", "one star"], []),
    ]
    (tmp_path / "caps.csv").write_text("file,caption\ny.png,a blue square\n")
    assert CaptionFolder(tmp_path, tmp_path / "caps.csv")[0].captions == ["a blue square"]
    (tmp_path / "bad.jsonl").write_text('{"caption": "no file"}\n')
    with pytest.raises(ValueError, match="has no 'file' field"):
        CaptionFolder(tmp_path, tmp_path / "bad.jsonl")
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match=r"broken\.jsonl:1 is not valid JSON"):
        CaptionFolder(tmp_path, tmp_path / "broken.jsonl")

    classes = tmp_path / "classes"
    for cls in ("cat", "dog"):
        (classes / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(classes / cls / "1.jpg")
    (classes / "dog" / "notes.txt").write_text("ignored")
    assert [(it.id, it.categories) for it in ClassFolders(classes)] == [
        ("cat/1.jpg", ["cat"]),
        ("dog/1.jpg", ["dog"]),
    ]
