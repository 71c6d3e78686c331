"""Bad LLaVA inputs fail or are skipped in a way a user can act on: truncated images (which PIL's
``verify()`` passes) are caught by a full decode, or skipped and named once when read during a
fit; broken JSON names the file and line; only a list of records (or JSON lines) is accepted."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
from PIL import Image

from textvision.data.llava import LlavaConversations


def _record(i, image):
    return {
        "id": f"r{i}",
        "image": image,
        "conversations": [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A."}],
    }


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(images / name, quality=90)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    (images / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with Image.open(images / "truncated.jpg") as handle:
        handle.verify()  # the trap: PIL's verify() accepts the truncated file
    return images


def _write(tmp_path, payload, name="data.json"):
    path = tmp_path / name
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    else:
        path.write_text(payload)
    return path


def test_verify_images_decodes_and_skips_a_truncated_jpeg(tmp_path, folder, caplog):
    records = [_record(0, "a.jpg"), _record(1, "truncated.jpg"), _record(2, "b.jpg")]
    path = _write(tmp_path, json.dumps(records))
    with caplog.at_level(logging.WARNING, logger="textvision.data.llava"):
        data = LlavaConversations(
            path, folder, image_size=8, verify_images=True, cache_dir=str(tmp_path / "c")
        )
    assert [item[2] for item in data.items] == ["r0", "r2"] and data.stats.unreadable_image == 1
    assert "truncated.jpg" in caplog.text


def test_a_truncated_jpeg_read_mid_fit_is_skipped_counted_and_named_once(tmp_path, folder, caplog):
    records = [_record(0, "a.jpg"), _record(1, "truncated.jpg"), _record(2, "b.jpg")]
    path = _write(tmp_path, json.dumps(records))
    data = LlavaConversations(path, folder, image_size=8, cache_dir=str(tmp_path / "c"))
    assert len(data) == 3
    with caplog.at_level(logging.WARNING, logger="textvision.data.llava"):
        ids = [data[i]["id"] for i in (0, 1, 2, 1, 1)]
    assert ids == ["r0", "r2", "r2", "r2", "r2"]  # the next readable item stands in
    named = [r for r in caplog.records if "truncated.jpg" in r.getMessage()]
    assert len(named) == 1 and data.stats.unreadable_image == 1


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        ('[\n  {"id": "a", "image": "a.jpg",\n   "conversations": [}\n]', ":3:"),  # broken JSON, line 3
        ('[\n  {"id": "a"},\n  {"id": "b"', ":3:"),  # truncated
        (b'[\n{"id": "a",\n "image": "\xff\xfe.jpg"}]', ":3:"),  # not UTF-8, on line 3
        ('{"id": "a", "image": "a.jpg"}\n{"id": "b", oops}\n', ":2:"),  # JSON lines, line 2
    ],
    ids=["syntax", "truncated", "not-utf8", "jsonl"],
)
def test_json_errors_name_the_file_and_line(tmp_path, folder, payload, where):
    path = _write(tmp_path, payload)
    with pytest.raises(ValueError) as error:
        LlavaConversations(path, folder, cache_dir=str(tmp_path / "c"))
    assert f"{path}{where}" in str(error.value)


@pytest.mark.parametrize(
    "payload",
    [json.dumps(_record(0, "a.jpg"), indent=2), "42", ""],
    ids=["one-record-object", "scalar", "empty"],
)
def test_only_a_list_of_records_is_accepted(tmp_path, folder, payload):
    # (a pretty-printed object used to be read as a one-record data set, and trained on)
    path = _write(tmp_path, payload)
    with pytest.raises(ValueError, match=f"{path}:1: .*(expected a list of records|empty)"):
        LlavaConversations(path, folder, cache_dir=str(tmp_path / "c"))


def test_json_lines_still_load(tmp_path, folder):
    path = _write(tmp_path, "\n".join(json.dumps(_record(i, "a.jpg")) for i in range(2)) + "\n", "d.jsonl")
    data = LlavaConversations(path, folder, image_size=8, cache_dir=str(tmp_path / "c"))
    assert [item[2] for item in data.items] == ["r0", "r1"]
