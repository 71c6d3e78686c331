"""MMVP-VLM: a tiny generated set in the official layout, a hand-made scorer with known answers, and
the open_clip adapter on a tiny randomly initialised CLIP."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from textvision.data.images import ImageLoadError
from textvision.eval.cli import main
from textvision.eval.mmvp_vlm import (
    MMVP_VLM_CATEGORIES,
    MMVPVLMBenchmark,
    OpenCLIPScorer,
    clip_resize_center_crop,
    load_clip_image,
    read_mmvp_vlm_pairs,
    score_mmvp_vlm,
)
from textvision.eval.run import evaluate_benchmark
from textvision.eval.sources import MissingBenchmarkError

RED, BLUE = (220, 20, 20), (20, 20, 220)
# qid, type (folder), statement, image colour
STATEMENTS = [
    (1, "Orientation", "a red square", RED),  # pair 0: both statements pick right
    (2, "Orientation", "a blue square", BLUE),
    (3, "Presence", "a blue thing", BLUE),  # pair 1: statement 2 also picks the blue image 1: wrong
    (4, "Presence", "another blue thing", RED),
    (5, "Camera Perspective", "a plain view", RED),  # pair 2: tie -> image 2, but qid 5 is odd: wrong
    (6, "Camera Perspective", "a blue view", BLUE),
]


class ColourScorer:
    """Known answers: +1 for a red image and a text saying red, -1 for blue; 0 when no colour word."""

    def similarity(self, images, texts):
        redness = torch.sign(images[:, 0].mean(dim=(1, 2)) - images[:, 2].mean(dim=(1, 2)))  # (B,)
        wants = torch.tensor([1.0 if "red" in t else -1.0 if "blue" in t else 0.0 for t in texts])
        assert all(t.startswith("a photo of ") for t in texts)
        return redness[:, None] * wants[None, :]


def _write_set(root, header="qid,qtype,statement\n", rows=STATEMENTS, image_dir="MLLM_VLM Images"):
    root.mkdir(parents=True, exist_ok=True)
    lines = [header] + [f'{qid},{qtype},"{statement}"\n' for qid, qtype, statement, _ in rows]
    (root / "Questions.csv").write_text("".join(lines), encoding="utf-8")
    for qid, qtype, _, colour in rows:
        folder = root / image_dir / qtype.replace(" ", "_")  # the HF README's folder spelling
        folder.mkdir(parents=True, exist_ok=True)
        array = np.empty((30 + qid, 41, 3), dtype=np.uint8)
        array[...] = colour
        Image.fromarray(array).save(folder / f"{qid}.jpg")
    return root


@pytest.mark.parametrize("header", ["qid,qtype,statement\n", "\ufeffQuestion ID,Type,Statement\n", ""])
def test_known_answers_per_category_and_average(tmp_path, header):
    root = _write_set(tmp_path / "vlm", header=header)
    bench = MMVPVLMBenchmark(root, image_size=16, pairs_per_category=1)
    result = score_mmvp_vlm(ColourScorer(), bench, batch_pairs=2, progress=False)
    metrics = result["metrics"]
    per = metrics["by_category"]
    assert list(per) == list(MMVP_VLM_CATEGORIES[:3])
    assert [per[c]["pair_acc"] for c in per] == [1.0, 0.0, 0.0]
    assert metrics["average"] == pytest.approx(1 / 3) and metrics["n_categories"] == 3
    assert (metrics["n_pairs_correct"], metrics["n_pairs"], metrics["pair_acc"]) == (1, 3, 1 / 3)
    assert metrics["statement_acc"] == pytest.approx(4 / 6)
    items = result["items"]
    assert items[1]["pred"] == ["img1", "img1"] and items[1]["gt"] == ["img1", "img2"]
    assert items[2]["p_image1"][0] == pytest.approx(0.5) and items[2]["pred"][0] == "img2"


def test_pairs_follow_file_position_and_qtype_folder(tmp_path):
    root = _write_set(tmp_path / "vlm", image_dir="MMVP_VLM_Images")
    pairs = read_mmvp_vlm_pairs(root, pairs_per_category=2)
    assert [p.category for p in pairs] == [MMVP_VLM_CATEGORIES[0]] * 2 + [MMVP_VLM_CATEGORIES[1]]
    assert pairs[2].image_paths[0] == root / "MMVP_VLM_Images" / "Camera_Perspective" / "5.jpg"
    assert pairs[0].texts == ["a photo of a red square", "a photo of a blue square"]
    assert pairs[0].gold_first == (True, False)


def test_bad_files_fail_clearly(tmp_path):
    with pytest.raises(MissingBenchmarkError, match="MMVP/MMVP_VLM"):
        read_mmvp_vlm_pairs(tmp_path / "absent")
    root = _write_set(tmp_path / "odd", rows=STATEMENTS[:5])
    with pytest.raises(ValueError, match="even number"):
        read_mmvp_vlm_pairs(root)
    root = _write_set(tmp_path / "bad", rows=STATEMENTS)
    with open(root / "Questions.csv", "a") as handle:
        handle.write("7,Orientation\n")
    with pytest.raises(ValueError, match="line 8: expected 'qid, qtype, statement'"):
        read_mmvp_vlm_pairs(root)
    root = _write_set(tmp_path / "many", rows=STATEMENTS)
    with pytest.raises(ValueError, match="exceed 9 categories"):
        read_mmvp_vlm_pairs(root, pairs_per_category=0)
    root = _write_set(tmp_path / "missing")
    (root / "MLLM_VLM Images" / "Presence" / "4.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"4\.jpg"):
        MMVPVLMBenchmark(root, image_size=16, pairs_per_category=1)
    bench = MMVPVLMBenchmark(root, image_size=16, pairs_per_category=1, skip_missing_images=True)
    assert [p.qids for p in bench.pairs] == [(1, 2), (5, 6)] and len(bench.skipped) == 1


def test_clip_geometry_resizes_the_short_side_and_crops():
    image = torch.rand(3, 30, 50)
    out = clip_resize_center_crop(image, 12)
    assert out.shape == (3, 12, 12) and 0.0 <= out.min() and out.max() <= 1.0
    flat = torch.full((3, 7, 9), 0.25)
    assert torch.allclose(clip_resize_center_crop(flat, 5), torch.full((3, 5, 5), 0.25), atol=1e-6)


def test_clip_image_loading_equals_open_clip_preprocess(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    rng = np.random.default_rng(3)
    path = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, (45, 71, 3), dtype=np.uint8)).save(path)
    preprocess = open_clip.image_transform(32, is_train=False)  # Resize, CenterCrop, ToTensor, Normalize
    with Image.open(path) as image:
        expected = preprocess(image)
    ours = load_clip_image(path, 32)
    assert ours.shape == (3, 32, 32)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(3, 1, 1)
    torch.testing.assert_close((ours - mean) / std, expected, rtol=0, atol=1e-6)
    Image.fromarray(rng.integers(0, 256, (20, 30), dtype=np.uint8)).save(tmp_path / "gray.png")
    assert load_clip_image(tmp_path / "gray.png", 16).shape == (3, 16, 16)
    with pytest.raises(ImageLoadError, match=r"missing\.jpg"):
        load_clip_image(tmp_path / "missing.jpg", 16)


@pytest.fixture(scope="module")
def tiny_clip():
    open_clip = pytest.importorskip("open_clip")
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=16,
        vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=32),
        text_cfg=CLIPTextCfg(context_length=16, vocab_size=49408, width=32, heads=2, layers=1),
    ).eval()
    return model, open_clip.SimpleTokenizer(context_length=16)


def test_open_clip_scorer_matches_clip_logits(tiny_clip):
    model, tokenizer = tiny_clip
    scorer = OpenCLIPScorer(model, tokenizer)
    assert scorer.image_size == 32
    images = torch.rand(3, 3, 32, 32)
    texts = ["a photo of a cat", "a photo of two dogs"]
    logits = scorer.similarity(images, texts)
    assert logits.shape == (3, 2)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        image_features, text_features, scale = model((images - mean) / std, tokenizer(texts))
    expected = scale * image_features @ text_features.T  # CLIP's logits_per_image
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_open_clip_scorer_end_to_end(tmp_path, tiny_clip):
    model, tokenizer = tiny_clip
    root = _write_set(tmp_path / "vlm")
    scorer = OpenCLIPScorer(model, tokenizer)
    result = evaluate_benchmark(scorer, "mmvp_vlm", root, image_size=scorer.image_size, progress=False)
    assert result["metrics"]["n_pairs"] == 3
    # the prediction is P(image 1 | statement) > 0.5 with P the softmax over the pair's two images
    bench = MMVPVLMBenchmark(root, image_size=32)
    pair = bench.pairs[1]
    logits = scorer.similarity(bench.load_images(pair), pair.texts)  # (image, statement)
    p_first = logits.softmax(dim=0)[0]
    assert result["items"][1]["p_image1"] == pytest.approx(p_first.tolist(), abs=1e-5)
    assert result["items"][1]["pred"] == ["img1" if p > 0.5 else "img2" for p in p_first]


def test_cli_mmvp_vlm_with_injected_scorer(tmp_path):
    root = _write_set(tmp_path / "vlm")
    out = tmp_path / "out"
    result = main(
        [
            "--benchmark",
            "mmvp_vlm",
            "--data",
            str(root),
            "--out",
            str(out),
            "--image-size",
            "16",
            "--no-progress",
            "--device",
            "cpu",
        ],
        model=ColourScorer(),
    )
    assert result["headline"]["metric"] == "average"
    data = json.loads((out / "mmvp_vlm.json").read_text())
    # 15 pairs per category by default: all three pairs are in the first category
    assert data["metrics"]["by_category"][MMVP_VLM_CATEGORIES[0]]["n_pairs_correct"] == 1
    markdown = (out / "mmvp_vlm.md").read_text()
    assert "| **average of 1 categories** | **33.3** | |" in markdown
    with pytest.raises(TypeError, match="similarity"):
        evaluate_benchmark(object(), "mmvp_vlm", root, image_size=16, progress=False)


def test_cli_builds_an_open_clip_model_by_name(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tv-tiny-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "configs")  # a local config: no download
    root = _write_set(tmp_path / "vlm")
    out = tmp_path / "out"
    result = main(
        [
            "--benchmark",
            "mmvp_vlm",
            "--data",
            str(root),
            "--out",
            str(out),
            "--no-progress",
            "--device",
            "cpu",
            "--open-clip-model",
            "tv-tiny-clip",
        ]
    )
    assert result["run"]["model"] == "OpenCLIPScorer" and result["run"]["image_size"] == 32
    assert result["run"]["config"] == {"open_clip_model": "tv-tiny-clip", "open_clip_pretrained": None}
    assert result["metrics"]["n_pairs"] == 3 and 0.0 <= result["metrics"]["average"] <= 1.0
    assert (out / "mmvp_vlm.json").is_file()
