"""LLaVA conversation JSON: real files written here, bad records skipped and counted."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from textvision.data.images import ImageLoadError
from textvision.data.llava import PAD_COLOUR, LlavaConversations, pad_to_square, strip_image_tag
from textvision.data.sample import check_sample


def _turns(*pairs):
    out = []
    for human, gpt in pairs:
        out += [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]
    return out


@pytest.fixture
def llava_files(tmp_path):
    folder = tmp_path / "images"
    (folder / "coco").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(folder / "coco" / "rgb.jpg")
    Image.fromarray(np.array([[0, 40000], [65535, 1000]], dtype=np.uint16)).save(folder / "gray16.png")
    Image.new("RGBA", (7, 5), (255, 0, 0, 0)).save(folder / "rgba.png")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    records = [
        {
            "id": "000000033471",
            "image": "coco/rgb.jpg",
            "conversations": _turns(("<image>\nWhat colour is the bus?", "Red."), ("And the sky?", "Blue.")),
        },
        {"id": "gray", "image": "gray16.png", "conversations": _turns(("Describe it.\n<image>", "Dark."))},
        {"id": "rgba", "image": "rgba.png", "conversations": _turns(("<image> Is it transparent?", "Yes."))},
        {"id": "gone", "image": "coco/missing.jpg", "conversations": _turns(("<image>\nQ?", "A."))},
        {"id": "gone2", "image": "missing2.jpg", "conversations": _turns(("<image>\nQ?", "A."))},
        {"id": "no_conv", "image": "coco/rgb.jpg"},
        {"id": "empty", "image": "coco/rgb.jpg", "conversations": []},
        {
            "id": "roles",
            "image": "coco/rgb.jpg",
            "conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "?"}],
        },
        {"id": "odd", "image": "coco/rgb.jpg", "conversations": [{"from": "human", "value": "?"}]},
        {"id": "text", "conversations": _turns(("Tell me a joke.", "No."))},
        {"id": "corrupt", "image": "corrupt.jpg", "conversations": _turns(("<image>\nQ?", "A."))},
    ]
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(records))
    return path, folder, tmp_path / "cache"


def test_loads_counts_and_converts(llava_files, caplog):
    path, folder, cache = llava_files
    with caplog.at_level(logging.WARNING, logger="textvision.data.llava"):
        data = LlavaConversations(path, folder, image_size=16, cache_dir=str(cache))
    stats = data.stats
    assert stats.records == 11
    assert stats.missing_image == 2 and stats.malformed == 4 and stats.text_only_skipped == 1
    assert stats.kept_records == 4 and len(data) == 4 and stats.skipped == 7
    assert stats.examples["missing_image"][0] == "gone"
    warnings = [r for r in caplog.records if r.name == "textvision.data.llava"]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "2 missing image" in message and "4 malformed" in message and "'gone'" in message
    ids = [data.items[i][2] for i in range(len(data))]
    assert ids == ["000000033471", "gray", "rgba", "corrupt"]  # leading zeros kept
    first = data[0]
    check_sample(first)
    assert first["instruction"] == first["prompt"] == "What colour is the bus?"
    assert first["answer"] == "Red." and first["options"] == [] and first["label"] == -1
    assert first["image"].shape == (3, 16, 16)
    gray, rgba = data[1], data[2]
    assert gray["instruction"] == "Describe it."
    assert torch.equal(gray["image"][0], gray["image"][1])  # 16-bit grayscale -> 3 equal channels
    assert gray["image"].max() > 0.5  # kept its range, not clipped to black/white garbage
    assert torch.allclose(rgba["image"], torch.ones(3, 16, 16), atol=1e-5)  # transparent -> white
    # the corrupt file is skipped when read (the next readable item stands in), counted and named
    with caplog.at_level(logging.WARNING, logger="textvision.data.llava"):
        assert data[3]["id"] == "000000033471"
    assert data.stats.unreadable_image == 1 and "corrupt.jpg" in caplog.records[-1].getMessage()
    strict = LlavaConversations(path, folder, image_size=16, cache_dir=str(cache))
    strict.on_error = "raise"  # (raise mode at construction stops at the missing files first)
    with pytest.raises(ImageLoadError, match="corrupt"):
        strict[3]


def test_all_turns_blank_text_and_verify(llava_files):
    path, folder, cache = llava_files
    data = LlavaConversations(
        path, folder, image_size=8, turns="all", text_only="blank", verify_images=True, cache_dir=str(cache)
    )
    assert data.stats.unreadable_image == 1 and data.stats.text_only_blank == 1
    ids = [item[2] for item in data.items]
    assert ids == ["000000033471", "000000033471:1", "gray", "rgba", "text"]
    second = data[1]
    assert second["instruction"] == "And the sky?" and second["answer"] == "Blue."
    text = data[4]
    assert torch.equal(text["image"], torch.full((3, 8, 8), 0.5)) and text["answer"] == "No."


def test_raise_mode_names_the_record(llava_files):
    path, folder, cache = llava_files
    with pytest.raises(ValueError, match=r"'gone'.*not found"):
        LlavaConversations(path, folder, on_error="raise", cache_dir=str(cache))


def test_mixed_type_ids_and_bad_arguments(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    Image.new("L", (4, 4), 128).save(folder / "a.png")
    records = [
        {"id": "007", "image": "a.png", "conversations": _turns(("<image>\nQ?", "A."))},
        {"id": 42, "image": "a.png", "conversations": _turns(("<image>\nQ2?", "B."))},
        {"id": "bad", "image": 5, "conversations": "oops"},
    ]
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(records))
    data = LlavaConversations(path, folder, image_size=4, cache_dir=str(tmp_path / "cache"))
    assert [item[2] for item in data.items] == ["007", "42"] and data.stats.malformed == 1
    assert data[1]["instruction"] == "Q2?"
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        LlavaConversations(tmp_path / "missing.json", folder)
    with pytest.raises(FileNotFoundError, match="image folder"):
        LlavaConversations(path, tmp_path / "nowhere")
    with pytest.raises(ValueError, match="turns"):
        LlavaConversations(path, folder, turns="last")
    only_bad = tmp_path / "bad.json"
    only_bad.write_text(json.dumps([records[2]]))
    with pytest.raises(ValueError, match="no usable records"):
        LlavaConversations(only_bad, folder, cache_dir=str(tmp_path / "cache"))


def test_strip_image_tag():
    assert strip_image_tag("<image>\nWhat is it?") == "What is it?"
    assert strip_image_tag("What <image> is it?\n<image>") == "What  is it?"
    assert strip_image_tag("<image>") == ""


def test_pad_resize_keeps_aspect(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    Image.new("RGB", (40, 20), (255, 0, 0)).save(folder / "wide.png")
    path = tmp_path / "one.json"
    path.write_text(
        json.dumps([{"id": "w", "image": "wide.png", "conversations": _turns(("<image>Q", "A"))}])
    )
    cache = str(tmp_path / "cache")
    padded = LlavaConversations(path, folder, image_size=20, resize="pad", cache_dir=cache)[0]["image"]
    assert padded.shape == (3, 20, 20)
    assert torch.allclose(padded[:, 10, 10], torch.tensor([1.0, 0.0, 0.0]), atol=1e-3)
    assert torch.allclose(padded[:, 1, 10], torch.tensor(PAD_COLOUR), atol=1e-3)  # band above
    stretched = LlavaConversations(path, folder, image_size=20, cache_dir=cache)[0]["image"]
    assert torch.allclose(stretched, torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 20, 20), atol=1e-3)
    square = torch.rand(3, 5, 5)
    assert pad_to_square(square) is square
    tall = pad_to_square(torch.zeros(3, 6, 2))
    assert tall.shape == (3, 6, 6) and torch.equal(tall[:, :, 2:4], torch.zeros(3, 6, 2))
    with pytest.raises(ValueError, match="resize"):
        LlavaConversations(path, folder, resize="crop")


def test_rows_stay_aligned_across_scan_chunks(tmp_path):
    """The scan reads Arrow in chunks of 8192 rows; item k must still point at its own record."""
    folder = tmp_path / "img"
    folder.mkdir()
    Image.new("RGB", (4, 4)).save(folder / "a.png")
    records = [
        {"id": f"r{i}", "image": "a.png", "conversations": _turns((f"<image>\nQ{i}?", f"A{i}"))}
        for i in range(8300)
    ]
    records[100]["conversations"] = []  # one malformed record shifts items against rows
    path = tmp_path / "big.json"
    path.write_text(json.dumps(records))
    data = LlavaConversations(path, folder, image_size=4, cache_dir=str(tmp_path / "cache"))
    assert len(data) == 8299 and data.stats.malformed == 1
    for k in (0, 99, 100, 8190, 8191, 8298):
        sample = data[k]
        i = k if k < 100 else k + 1
        assert sample["id"] == f"r{i}" and sample["instruction"] == f"Q{i}?" and sample["answer"] == f"A{i}"
