"""Tests of shapes.py and model.load("shape:..."): the real architectures, built from the published
configs' numbers without the hub, have the published parameter counts (on the meta device: no
memory), tie their heads where the checkpoints do, cut their depth on request, and run.

    python -m pytest -q tests/test_shapes.py
"""

import numpy as np
import pytest
import torch
from PIL import Image

import model as M
import prefix as X
import shapes


@pytest.mark.parametrize("name", sorted(shapes.SHAPES))
def test_parameter_counts_match_the_published_sizes(name):
    family, published, text, vision, tied = shapes.SHAPES[name]
    model, processor = M.load(f"shape:{name}", device="meta")
    assert type(model).__name__ == M.FAMILIES[family][0]
    count = sum(p.numel() for p in model.parameters())            # a tied head is counted once
    assert abs(count / published - 1) < 0.03, (name, count, published)
    config = model.config.get_text_config()
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == \
        (text["hidden_size"], text["num_hidden_layers"], text["vocab_size"])
    assert model.get_input_embeddings().weight.shape == (text["vocab_size"], text["hidden_size"])
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    assert len(model.model.visual.blocks) == vision["depth"]
    if family == "qwen3_5":      # 3 Gated DeltaNet layers : 1 full attention, as released
        assert config.layer_types.count("full_attention") * 4 == config.num_hidden_layers
    # The processor stays the tiny offline one, and the config's image tokens are its tokens.
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert processor.image_processor.patch_size == vision["patch_size"]


def test_depth_cuts_and_bad_specs():
    model, _ = M.load("shape:qwen3_5-27b:layers=6:vision_layers=2", device="meta")
    assert model.config.text_config.layer_types == ["linear_attention"] * 3 + ["full_attention"] + ["linear_attention"] * 2
    assert len(model.model.visual.blocks) == 2 and model.config.text_config.hidden_size == 5120
    model, _ = M.load("shape:qwen2_5_vl-7b:vision_layers=10", device="meta")
    assert model.config.vision_config.fullatt_block_indexes == [7]
    model, _ = M.load("shape:qwen3_vl-8b:vision_layers=10", device="meta")
    assert model.config.vision_config.deepstack_visual_indexes == [8]
    M.check_model_name("shape:qwen3_vl-2b:layers=1")
    for bad, message in (("shape:qwen3_5-9b", "bad shape spec"), ("shape:qwen3_5-4b:depth=2", "unknown option"),
                         ("shape:qwen3_5-4b:layers=0", "at least 1")):
        with pytest.raises(ValueError, match=message):
            M.check_model_name(bad)


def test_a_cut_real_width_model_scores_token_ids_beyond_the_tiny_tokenizer():
    # Qwen3-VL-2B at real width (2,048) and vocabulary (151,936, tied), one layer each: the shared
    # prefix path with head.py equals the full-logits reference on answers with ids up to V - 1.
    model, processor = M.load("shape:qwen3_vl-2b:layers=1:vision_layers=1")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8))
    prompts = M.student_prompts(processor, [image], ["Which symbol?"])
    ids = torch.tensor([[151935, 5000, 120000, 17], [3, 151000, 1, 2]])
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    with torch.no_grad():
        got = X.score(model, X.encode(model, prompts, hold_last=True), [0, 0], ids, mask)
        want = M.repeated_prompt_logprobs(model, prompts, [0, 0], ids, mask)
    assert torch.isfinite(got).all() and (got[mask] < 0).all()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
