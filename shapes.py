"""
Real-size Qwen VLM shapes without the hub: the published configs' numbers, written down here.

    model, processor = model.load("shape:qwen3_5-4b", device="meta")        # count parameters, no memory
    model, processor = model.load("shape:qwen3_5-4b:layers=4", device="cpu") # real width and vocabulary, 4 layers

A `shape:` model is the real architecture (widths, depths, heads, KV heads, head dim, MLP width,
vocabulary, layer types, vision tower) with random weights, for measuring what a phase costs at
the real size (scale.py, docs/scale.md). Its tokenizer and processor are the tiny offline ones
(model.py): their ~1,000 token ids are valid inputs of the real vocabulary, and the image token ids
in the config are the tiny tokenizer's. Options after the name cut the depth, to fit a CPU:
`layers=N` (language model: the first N layer types, so Qwen3.5 keeps 3 linear : 1 full) and
`vision_layers=N` (vision tower; window / DeepStack indexes beyond it dropped).

Sources (config.json of each checkpoint on the Hugging Face hub, as mirrored in public code):
  Qwen/Qwen2.5-VL-7B-Instruct, Qwen/Qwen3-VL-2B-Instruct, Qwen/Qwen3-VL-8B-Instruct,
  Qwen/Qwen3.5-4B, Qwen/Qwen3.5-27B (text_config and vision_config; Qwen3.5's multi-token-prediction
  layer, `mtp_num_hidden_layers` 1, is not part of the transformers model and not built here).
Tests: python -m pytest -q tests/test_shapes.py (parameter counts on meta against the published sizes).
"""

import re

from transformers import AutoConfig

# name -> (family, published parameter count, language model, vision tower, tied head).
# Language model: hidden, layers, heads, KV heads, head dim, MLP width, vocabulary, rope.
# Vision tower: depth, hidden, heads, MLP width, patch, out_hidden = the language model's hidden.
SHAPES = {
    # Qwen2.5-VL-7B-Instruct: 8.29B parameters (model card).
    "qwen2_5_vl-7b": ("qwen2_5_vl", 8.29e9,
                      dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                           head_dim=128, intermediate_size=18944, vocab_size=152064,
                           rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}),
                      dict(depth=32, hidden_size=1280, num_heads=16, intermediate_size=3420, patch_size=14,
                           window_size=112, fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu"),
                      False),
    # Qwen3-VL-2B-Instruct: 2.13B parameters (model card), head tied to the embedding.
    "qwen3_vl-2b": ("qwen3_vl", 2.13e9,
                    dict(hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                         head_dim=128, intermediate_size=6144, vocab_size=151936,
                         rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20],
                                          "mrope_interleaved": True}),
                    dict(depth=24, hidden_size=1024, num_heads=16, intermediate_size=4096, patch_size=16,
                         num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17]),
                    True),
    # Qwen3-VL-8B-Instruct: 8.77B parameters (model card).
    "qwen3_vl-8b": ("qwen3_vl", 8.77e9,
                    dict(hidden_size=4096, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                         head_dim=128, intermediate_size=12288, vocab_size=151936,
                         rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20],
                                          "mrope_interleaved": True}),
                    dict(depth=27, hidden_size=1152, num_heads=16, intermediate_size=4304, patch_size=16,
                         num_position_embeddings=2304, deepstack_visual_indexes=[8, 16, 24]),
                    False),
    # Qwen3.5-4B: 4.5B parameters (the hub's count); 32 layers, every 4th full attention (gated), the
    # rest Gated DeltaNet (16 key heads, 32 value heads of 128); head tied to the embedding.
    "qwen3_5-4b": ("qwen3_5", 4.5e9,
                   dict(hidden_size=2560, num_hidden_layers=32, num_attention_heads=16, num_key_value_heads=4,
                        head_dim=256, intermediate_size=9216, vocab_size=248320,
                        linear_num_key_heads=16, linear_num_value_heads=32, linear_key_head_dim=128,
                        linear_value_head_dim=128, linear_conv_kernel_dim=4,
                        rope_parameters={"rope_type": "default", "rope_theta": 1e7, "mrope_section": [11, 11, 10],
                                         "mrope_interleaved": True, "partial_rotary_factor": 0.25}),
                   dict(depth=24, hidden_size=1024, num_heads=16, intermediate_size=4096, patch_size=16,
                        num_position_embeddings=2304, deepstack_visual_indexes=[]),
                   True),
    # Qwen3.5-27B: "27B" by name (no exact count found offline); 64 layers (48 Gated DeltaNet with 48
    # value heads, 16 full attention).
    "qwen3_5-27b": ("qwen3_5", 27e9,
                    dict(hidden_size=5120, num_hidden_layers=64, num_attention_heads=24, num_key_value_heads=4,
                         head_dim=256, intermediate_size=17408, vocab_size=248320,
                         linear_num_key_heads=16, linear_num_value_heads=48, linear_key_head_dim=128,
                         linear_value_head_dim=128, linear_conv_kernel_dim=4,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e7, "mrope_section": [11, 11, 10],
                                          "mrope_interleaved": True, "partial_rotary_factor": 0.25}),
                    dict(depth=27, hidden_size=1152, num_heads=16, intermediate_size=4304, patch_size=16,
                         num_position_embeddings=2304, deepstack_visual_indexes=[]),
                    False),
}
SHAPE_SPEC = re.compile(r"shape:([\w.]+-\w+)((?::\w+=\d+)*)")     # "shape:NAME[:layers=N][:vision_layers=N]"
OPTIONS = ("layers", "vision_layers")


def parse(spec):
    """'shape:NAME[:layers=N][:vision_layers=N]' -> (name, {option: N}); a clear error otherwise."""
    match = SHAPE_SPEC.fullmatch(spec)
    if not match or match.group(1) not in SHAPES:
        raise ValueError(f"bad shape spec {spec!r}: expected shape:NAME[:layers=N][:vision_layers=N] with NAME in "
                         f"{sorted(SHAPES)}, e.g. 'shape:qwen3_5-4b:layers=4'")
    options = dict(part.split("=") for part in match.group(2).split(":")[1:])
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise ValueError(f"shape spec {spec!r}: unknown option(s) {sorted(unknown)}; known: {list(OPTIONS)}")
    options = {k: int(v) for k, v in options.items()}
    if any(v < 1 for v in options.values()):
        raise ValueError(f"shape spec {spec!r}: depths must be at least 1")
    return match.group(1), options


def family(spec):
    return SHAPES[parse(spec)[0]][0]


def config(spec, token_ids):
    """The transformers config of a shape spec; token_ids: the (tiny) tokenizer's special ids
    (image_token_id, video_token_id, vision_start_token_id, vision_end_token_id, pad/eos)."""
    name, options = parse(spec)
    fam, _, text, vision, tied = SHAPES[name]
    text, vision = dict(text, max_position_embeddings=262144), dict(vision)
    layers = min(options.get("layers", text["num_hidden_layers"]), text["num_hidden_layers"])
    if fam == "qwen3_5":        # every 4th layer full attention, the others Gated DeltaNet
        kinds = ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(text["num_hidden_layers"])]
        text["layer_types"] = kinds[:layers]
    text["num_hidden_layers"] = layers
    depth = min(options.get("vision_layers", vision["depth"]), vision["depth"])
    vision.update(depth=depth, out_hidden_size=text["hidden_size"], spatial_merge_size=2, temporal_patch_size=2)
    if "fullatt_block_indexes" in vision:     # window attention elsewhere; the last block stays full
        vision["fullatt_block_indexes"] = [i for i in vision["fullatt_block_indexes"] if i < depth] or [depth - 1]
    if "deepstack_visual_indexes" in vision:
        vision["deepstack_visual_indexes"] = [i for i in vision["deepstack_visual_indexes"] if i < depth]
    text.update(tie_word_embeddings=tied, pad_token_id=token_ids["pad_token_id"],
                eos_token_id=token_ids["eos_token_id"], bos_token_id=None)
    ids = {k: token_ids[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    return AutoConfig.for_model(fam, text_config=text, vision_config=vision, tie_word_embeddings=tied, **ids)
