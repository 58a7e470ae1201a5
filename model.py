"""The two policies of V-Zero: load a Qwen VLM, encode its prompts, score given response tokens.

Paper parts (arXiv 2606.25319, see docs/method.md):
  - pi_s and pi_t, the student and the frozen teacher (sec. 1): `load` a Qwen2.5-VL, Qwen3-VL or
    Qwen3.5 checkpoint (hub id or local dir), or `build_tiny` a random one offline for CPU tests.
  - the three views (sec. 1, 5): the student prompt x = [full image, question]; the teacher prompts
    (x, z+) and (x, z-) = [full image, crop, one sentence about the crop, question]. All wording is
    in the constants below; z+ and z- prompts differ ONLY in the crop pixels.
  - the three-view replay (Alg. 1 lines 8-10, Eqs. 8, 15-16, 23): log pi(y_k | prompt, y_<k) of
    every answer token. The path training uses encodes each prompt once (prefix.py) and applies
    the output head without [N, T, V] logits (head.py); `repeated_prompt_logprobs`, the prompt
    repeated per answer with full logits (`answer_logprobs`), is its reference in the tests.
  - the pitfalls of docs/method.md sec. 8: exact alignment (first AND last token), vision tokens never
    sampled (`vision_token_ids`), same tokenizer and template for student and teacher
    (`check_compatible`), no full-vocabulary logits for prompt positions.

Use:
    model, processor = load("Qwen/Qwen3-VL-2B-Instruct", dtype=torch.bfloat16, device="cuda")
    model, processor = load("tiny:qwen2_5_vl")          # offline, random weights, ~0.5M params
    prompts = student_prompts(processor, [image], ["What colour is the cup?"])
    logp = repeated_prompt_logprobs(model, prompts, [0] * G, answer_ids, answer_mask)   # the reference
Tests: `python -m pytest -q tests/test_model.py`.
"""

import json
import os
import re

import torch
import torch.distributed
import torch.nn.functional as F
import transformers
from PIL import Image
from transformers import (AutoConfig, AutoModelForImageTextToText, BatchFeature, PreTrainedTokenizerFast,
                          Qwen2VLImageProcessorPil)
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor

import shapes

# ----------------------------------------------------------------------------------------------
# Prompt wording: the one place. The paper's exact teacher wording is unreleased (docs/method.md sec. 5).
# No system prompt; thinking mode off (Qwen3.5 templates read `enable_thinking`, others ignore it).
TEACHER_CROP_NOTE = ("The second image is a zoomed-in crop of the first image, "
                     "showing the region that is relevant to the question.")


def _user_turn(num_images, text):
    # One user turn: the images first, then the text, as Qwen's own examples do.
    return [{"role": "user", "content": [{"type": "image"}] * num_images + [{"type": "text", "text": text}]}]


# ----------------------------------------------------------------------------------------------
# Tiny offline models: tokenizer, chat template, image processor, configs.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]

# The Qwen2-VL chat template, minus its automatic "You are a helpful assistant." system turn, so a
# conversation without a system message renders without one (as Qwen3-VL's template does).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# Pixel bounds of the tiny models' image processor: the paper's [256^2, 4096^2] scaled down so a
# CPU step is cheap. Every image is resized (aspect kept) into [112^2, 224^2] pixels, snapped to a
# multiple of patch*merge (28 for Qwen2.5-VL, 32 for Qwen3-VL/3.5). A 224x224 full image becomes
# 16x16 patches = 64 merged tokens (Qwen2.5-VL) or 14x14 = 49 (Qwen3); a 56x56 crop is ZOOMED UP to
# 112x112 (Qwen2.5-VL) or 128x128 (Qwen3): 16 tokens, the "zoom" the teacher's crop view gets.
TINY_MIN_PIXELS, TINY_MAX_PIXELS = 112 * 112, 224 * 224

# family -> (model class, vision patch size in pixels). Each family's other quirks (window
# attention, DeepStack, linear attention) are set in `_tiny_config`.
FAMILIES = {"qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", 14),
            "qwen3_vl": ("Qwen3VLForConditionalGeneration", 16),
            "qwen3_5": ("Qwen3_5ForConditionalGeneration", 16)}
# size -> (hidden, layers, heads, kv heads, MLP width), one shape for the text and vision towers.
# tiny: ~0.5M parameters, for tests; small: ~9M, for the CPU demo.
SIZES = {"tiny": (64, 2, 4, 2, 128), "small": (256, 4, 4, 2, 768)}
TINY_SPEC = re.compile(r"(tiny|small):(\w+?)(?:@(\d+))?")     # "SIZE:FAMILY[@SEED]", e.g. tiny:qwen3_5@1
SUPPORTED_MODEL_TYPES = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"}


def _tokenizer_corpus():
    # A fixed, generated corpus of the words a synthetic VQA task uses, so the BPE learns whole
    # words ("colour", "Answer", ...) and its ~1024 tokens are the same in every process.
    colours = "red green blue yellow orange purple pink brown black white grey gray cyan magenta".split()
    shapes = "square circle triangle star cross diamond heart hexagon ring arrow letter digit".split()
    numbers = "zero one two three four five six seven eight nine ten eleven twelve".split()
    places = "left right top bottom middle centre center corner upper lower".split()
    objects = ("cup car dog cat bird tree house sign clock book ball chair table lamp bottle phone bag "
               "flag boat bus bike person hat shoe window door flower box key cake apple banana").split()
    words = ("What Which How many Is Are there the a an of in on at is are image picture crop region "
             "question Answer answer with single word letter colour color shape count object small "
             "large big tiny target zoomed-in first second showing relevant to Yes No yes no options "
             "Select from following choices option correct number text written behind next near "
             "above below inside outside holding wearing side does do this that it see visible "
             "street road building window wall floor sky water grass sign board screen shirt jacket "
             "people man woman child animal vehicle truck train plane horse cow sheep bear zebra "
             "kitchen room office store shop market park garden beach river mountain city "
             "name brand label price time date year month day hour minute menu title page "
             "striped dotted plain bright dark light pale deep metal wooden glass plastic paper "
             "round square-shaped long short tall wide narrow thick thin open closed full empty").split()
    lines = [f"What colour is the {s}? Answer: {c}" for c in colours for s in shapes]
    lines += [f"How many {s}s are in the {p} of the image? Answer: {n} ({i})"
              for s in shapes for p in places for i, n in enumerate(numbers)]
    lines += [f"Which letter is at the {p}? Answer: {chr(65 + i)}" for p in places for i in range(26)]
    lines += [f"Is the {o} {c}? Answer: {'Yes' if i % 2 else 'No'}" for o in objects for i, c in enumerate(colours)]
    lines += [f"What is the {o} next to the {s}? The {o} is {p}." for o in objects for s in shapes for p in places]
    lines += [" ".join(words), TEACHER_CROP_NOTE, " ".join(str(i) for i in range(1000))]
    lines += ["(A) (B) (C) (D) Answer with the option's letter from the given choices directly."]
    return lines


def _tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # byte-level, like Qwen
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_tokenizer_corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   padding_side="left", chat_template=CHAT_TEMPLATE)


class QwenImageProcessor(Qwen2_5_VLProcessor):
    """Qwen's processor for images only: tokenizer + image processor + chat template.

    The stock Qwen processors require a video processor, which needs torchvision, and without
    torchvision `AutoProcessor.from_pretrained` silently returns only the tokenizer. Image handling
    (placeholder expansion, mm_token_type_ids) is the same in Qwen2-VL, 2.5-VL, 3-VL and 3.5, so this
    one class serves every family, with and without torchvision, via `from_pretrained` too.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


def _tiny_config(family, size, tokenizer):
    hidden, layers, heads, kv_heads, mlp = SIZES[size]
    head_dim = hidden // heads
    # M-RoPE splits the rotary half-dims over (time, height, width) in Qwen2.5-VL's 16/24/24 ratio.
    rotary_half = head_dim // 2 if family != "qwen3_5" else head_dim // 4  # Qwen3.5: partial rotary
    s = 3 * rotary_half // 8
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [rotary_half - 2 * s, s, s]}
    token_id = tokenizer.convert_tokens_to_ids
    ids = dict(image_token_id=token_id("<|image_pad|>"), video_token_id=token_id("<|video_pad|>"),
               vision_start_token_id=token_id("<|vision_start|>"), vision_end_token_id=token_id("<|vision_end|>"))
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                max_position_embeddings=4096, rope_parameters=rope, tie_word_embeddings=False,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    vision = dict(depth=layers, hidden_size=hidden, intermediate_size=mlp, num_heads=heads,
                  patch_size=FAMILIES[family][1], spatial_merge_size=2, temporal_patch_size=2,
                  out_hidden_size=hidden)
    if family == "qwen2_5_vl":
        # Window attention in the vision tower, full attention in the last block (real: every 8th).
        vision.update(window_size=112, fullatt_block_indexes=[layers - 1])
    else:
        # Learned 2-D position grid (16x16, interpolated to any image); Qwen3 interleaves M-RoPE.
        vision.update(num_position_embeddings=256)
        rope["mrope_interleaved"] = True
    if family == "qwen3_vl":
        vision.update(deepstack_visual_indexes=[layers // 2])  # one DeepStack feature injection
    if family == "qwen3_5":
        # Gated-DeltaNet linear attention with full attention every 4th layer, as in the real model
        # (tiny, 2 layers: every 2nd). Rotary on half of each head (real: a quarter of 256 dims).
        rope["partial_rotary_factor"] = 0.5
        every = min(4, layers)
        layer_types = ["full_attention" if (i + 1) % every == 0 else "linear_attention" for i in range(layers)]
        text.update(layer_types=layer_types,
                    linear_num_key_heads=heads // 2, linear_num_value_heads=heads, linear_key_head_dim=head_dim,
                    linear_value_head_dim=head_dim, linear_conv_kernel_dim=4)
    return AutoConfig.for_model(family, text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)


def _tiny_processor(family):
    # The tiny tokenizer; the PIL image processor (works without torchvision) at the family's patch
    # size, merging 2x2 patches into one LLM token, as the real ones do.
    image_processor = Qwen2VLImageProcessorPil(patch_size=FAMILIES[family][1], merge_size=2, temporal_patch_size=2,
                                               min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS)
    return QwenImageProcessor(image_processor, _tiny_tokenizer(), chat_template=CHAT_TEMPLATE)


def _random_model(family, config, processor, seed, device):
    with torch.random.fork_rng(devices=[]), torch.device(device):  # seeded init, the caller's RNG untouched
        torch.manual_seed(seed)
        model = getattr(transformers, FAMILIES[family][0])(config)
    return _finish(model, processor), processor


def build_tiny(family="qwen2_5_vl", size="tiny", seed=0, device="cpu"):
    """A random-weight Qwen VLM + processor, built offline, identical for a seed in any process.
    device="meta": the model's shapes only, no weights (parallel.load_sharded fills them)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {sorted(FAMILIES)}")
    if size not in SIZES:
        raise ValueError(f"unknown tiny size {size!r}; choose one of {sorted(SIZES)}")
    processor = _tiny_processor(family)
    return _random_model(family, _tiny_config(family, size, processor.tokenizer), processor, seed, device)


def build_shape(spec, seed=0, device="cpu"):
    """A real-size architecture "shape:NAME[:layers=N][:vision_layers=N]" (shapes.py) with random
    weights and the tiny processor. device="meta" to count parameters without memory."""
    family = shapes.family(spec)
    processor = _tiny_processor(family)
    tok = processor.tokenizer
    ids = {f"{kind}_token_id": tok.convert_tokens_to_ids(f"<|{token}|>") for kind, token in
           (("image", "image_pad"), ("video", "video_pad"), ("vision_start", "vision_start"), ("vision_end", "vision_end"))}
    ids.update(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return _random_model(family, shapes.config(spec, ids), processor, seed, device)


def load(name, *, dtype=torch.float32, device="cpu", attn_implementation=None, trust_remote_code=False,
         min_pixels=None, max_pixels=None):
    """(model, processor) from a hub id, a local dir, an offline spec "SIZE:FAMILY[@SEED]", or a
    real-size random one "shape:NAME[:layers=N]" (shapes.py; on device="meta" to count parameters).
    device="meta" builds the model without reading any weight (see parallel.load_sharded).
    min_pixels / max_pixels override the image processor's bounds (see `set_pixel_bounds`)."""
    meta = torch.device(device).type == "meta"
    spec = TINY_SPEC.fullmatch(name)
    if spec or name.startswith("shape:"):
        build = device if meta else "cpu"
        if spec:
            model, processor = build_tiny(spec.group(2), spec.group(1), int(spec.group(3) or 0), device=build)
        else:
            model, processor = build_shape(name, device=build)
        if attn_implementation is not None:
            model.set_attn_implementation(attn_implementation)
        set_pixel_bounds(processor, min_pixels, max_pixels)
        # Cast the weights only, as from_pretrained does: the rotary inverse frequencies (buffers)
        # stay fp32, which positions in the thousands need (bf16 keeps 8 bits of them).
        for p in model.parameters():
            p.data = p.data.to(dtype)
        return model.to(device), processor
    check_model_name(name)
    # Check the architecture from config.json before fetching gigabytes of weights.
    model_type = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code).model_type
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{name!r} is a {model_type!r} model; supported: {sorted(SUPPORTED_MODEL_TYPES)}")
    kw = dict(dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code)
    if meta:
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(name, **kw), **kw)
    else:   # (straight to a GPU would need transformers' device_map, hence accelerate: not a dependency)
        model = AutoModelForImageTextToText.from_pretrained(name, **kw)
    processor = QwenImageProcessor.from_pretrained(name, trust_remote_code=trust_remote_code)
    if processor.chat_template is None:  # some checkpoints keep the template on the tokenizer only
        processor.chat_template = processor.tokenizer.chat_template
    processor.tokenizer.padding_side = "left"  # hub Qwen tokenizers pad on the right by default
    set_pixel_bounds(processor, min_pixels, max_pixels)
    return _finish(model, processor).to(device), processor


def check_model_name(name):
    """Refuse, without touching the network, a model name that cannot be loaded: a malformed tiny
    spec, or a path that does not exist (transformers would take it for a hub id and retry for 30 s)."""
    if TINY_SPEC.fullmatch(name):
        return
    if name.startswith("shape:"):
        shapes.parse(name)
        return
    if ":" in name and not name.startswith(("/", ".")):
        raise ValueError(f"bad tiny model spec {name!r}: expected SIZE:FAMILY[@SEED] with SIZE in {sorted(SIZES)}"
                         f" and FAMILY in {sorted(FAMILIES)}, e.g. 'tiny:qwen2_5_vl@0'")
    looks_local = name.startswith(("/", "./", "../", "~")) or name.count("/") > 1
    if looks_local and not os.path.isdir(os.path.expanduser(name)):
        raise ValueError(f"model {name!r}: no such directory (a hub id is ORG/NAME)")


def set_pixel_bounds(processor, min_pixels=None, max_pixels=None):
    """Every image is resized (aspect kept, sides snapped to patch * merge) to between min_pixels and
    max_pixels before it is cut into patches, so these two numbers decide how many visual tokens a
    prompt holds: about pixels / (patch * merge)^2, e.g. 16,384 tokens for a 4096^2 image at patch
    16. The release trains with [65,536, 16,777,216] (256^2 to 4096^2). None keeps the
    processor's own bound. Returns the (min, max) in force."""
    size = processor.image_processor.size
    lo = size["shortest_edge"] if min_pixels is None else int(min_pixels)
    hi = size["longest_edge"] if max_pixels is None else int(max_pixels)
    if not 0 < lo <= hi:
        raise ValueError(f"need 0 < min_pixels <= max_pixels, got {lo} and {hi}")
    processor.image_processor.size = {"shortest_edge": lo, "longest_edge": hi}
    return lo, hi


def _finish(model, processor):
    # Generation stops at <|im_end|> (end of the assistant turn) or <|endoftext|>, and pads with
    # <|endoftext|>: the ids come from the tokenizer, so this is right for every Qwen vocabulary.
    tok = processor.tokenizer
    end_of_turn, end_of_text = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    if tok.pad_token is None:
        tok.pad_token = "<|endoftext|>"
    model.generation_config.eos_token_id = [end_of_turn, end_of_text]
    model.generation_config.pad_token_id = end_of_text
    model.generation_config.bos_token_id = None
    return model.eval()


def vision_token_ids(processor):
    """Ids sampling must suppress: a sampled <|image_pad|> could not be re-scored (no image for it)."""
    vocab = processor.tokenizer.get_vocab()
    return [vocab[t] for t in VISION_TOKENS if t in vocab]


# ----------------------------------------------------------------------------------------------
# Prompt encoding.
def _render(processor, num_images, text):
    # Thinking off (docs/method.md sec. 6) for templates that have the switch (Qwen3.5); passing it to
    # others would only make transformers warn.
    template = processor.chat_template or ""
    thinking_off = {"enable_thinking": False} if "enable_thinking" in template else {}
    return processor.apply_chat_template(_user_turn(num_images, text), tokenize=False,
                                         add_generation_prompt=True, **thinking_off)


def encode_prompts(processor, images, texts, *, pixels=None):
    """The one prompt encoder: row i = one user turn with images[i] (then texts[i]), left padded.

    Returns a BatchFeature: input_ids, attention_mask, mm_token_type_ids [B, P] and pixel_values
    [sum of patches, D], image_grid_thw [num images, 3] (images in row order).
    pixels: a dict kept across calls (train.py keeps one per step): an image object met again (the
    full image in both teacher views; in the student's prompt too when both image processors agree)
    is resized and cut into patches once. A 4096^2 image takes ~1.5 s of CPU.
    """
    if len(images) != len(texts) or not texts:
        raise ValueError(f"need one image list per text and at least one prompt; got {len(images)} image "
                         f"lists and {len(texts)} texts")
    tokenizer = processor.tokenizer
    special = [t for t in tokenizer.all_special_tokens + [str(t) for t in tokenizer.added_tokens_decoder.values()
                                                          if t.special] if t]
    for row, (row_images, text) in enumerate(zip(images, texts)):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"prompt {row}: text must be a non-empty string, got {text!r}")
        if not isinstance(row_images, (list, tuple)) or not all(isinstance(im, Image.Image) for im in row_images):
            raise ValueError(f"prompt {row}: images must be a list of PIL images, got {row_images!r}")
        # A special token in a question is tokenised as that token: <|im_end|> would close the user
        # turn early, <|image_pad|> would ask for an image that is not there.
        found = sorted({t for t in special if t in text})
        if found:
            raise ValueError(f"prompt {row}: text contains the special token(s) {found} of the chat template; "
                             "images go in `images`, and a question must not hold these")
    # Each distinct image through the image processor once: resize into the pixel bounds, cut into
    # patches [t*h*w, D] with its grid (t, h, w).
    image_processor = processor.image_processor
    settings = json.dumps(image_processor.to_dict(), sort_keys=True, default=str)
    pixels = {} if pixels is None else pixels
    todo = list({id(im): im for row in images for im in row if (id(im), settings) not in pixels}.values())
    if todo:
        out = image_processor(images=[im.convert("RGB") for im in todo], return_tensors="pt")
        blocks = out["pixel_values"].split(out["image_grid_thw"].prod(-1).tolist())
        for im, block, grid in zip(todo, blocks, out["image_grid_thw"]):
            pixels[(id(im), settings)] = (block, grid, im)    # the image kept alive: its id stays its own
    encoded = [pixels[(id(im), settings)] for row in images for im in row]
    # Render each conversation with one <|image_pad|> per image, then expand the k-th one to image
    # k's number of merged tokens (patches / merge^2), as Qwen's processors do.
    merge = image_processor.merge_size ** 2
    image_pad = "<|image_pad|>"
    counts = iter(int(grid.prod()) // merge for _, grid, _ in encoded)
    rendered = ["".join(part if i == 0 else image_pad * next(counts) + part
                        for i, part in enumerate(_render(processor, len(row_images), text).split(image_pad)))
                for row_images, text in zip(images, texts)]
    # LEFT padding: every prompt ends at column P - 1, so response token k is at P + k in every row.
    out = tokenizer(rendered, padding=True, padding_side="left", return_token_type_ids=False, return_tensors="pt")
    out["mm_token_type_ids"] = (out["input_ids"] == tokenizer.convert_tokens_to_ids(image_pad)).long()  # image = 1
    if encoded:
        out["pixel_values"] = torch.cat([block for block, _, _ in encoded])
        out["image_grid_thw"] = torch.stack([grid for _, grid, _ in encoded])
    return BatchFeature(dict(out))


def student_prompts(processor, full_images, questions, *, pixels=None):
    """x: the full image and the question (the only view the student ever gets)."""
    return encode_prompts(processor, [[im] for im in full_images], list(questions), pixels=pixels)


def teacher_prompts(processor, full_images, crops, questions, *, pixels=None):
    """(x, z): the full image, then the crop, then the crop note and the question (Eq. 8)."""
    if not len(full_images) == len(crops) == len(questions):
        raise ValueError(f"got {len(full_images)} full images, {len(crops)} crops, {len(questions)} questions")
    return encode_prompts(processor, [[full, crop] for full, crop in zip(full_images, crops)],
                          [f"{TEACHER_CROP_NOTE}\n{q}" for q in questions], pixels=pixels)


def image_runs(token_types):
    """[L] mm_token_type_ids of one row -> ([first token], [last token]) of each image's run of image
    tokens (type 1), in order; two images' runs are separated by <|vision_end|><|vision_start|>."""
    image = token_types.cpu() == 1
    starts = (image & ~F.pad(image, (1, 0))[:-1]).nonzero().flatten().tolist()
    ends = (image & ~F.pad(image, (0, 1))[1:]).nonzero().flatten().tolist()
    return starts, ends


def select_prompts(inputs, rows, *, start=None, stop=None):
    """Prompt rows in the given order, repetition allowed ([0]*G + [1]*G ... repeats each prompt for
    its G siblings; a slice of rows is a micro-batch), re-padded on the left.

    start / stop (an int or one per selected row, Python-slice semantics) cut each row to its
    tokens [start, stop), counted over the row's REAL tokens, so the cut does not depend on how the
    batch was padded: the teacher splits its prompts into the part both views share and the rest
    (prefix.py). The images whose tokens lie inside a row's cut come with it; cutting through an
    image is an error."""
    known = {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"}
    if set(inputs) - known:
        raise ValueError(f"select_prompts does not know how to select {sorted(set(inputs) - known)}")
    num_prompts = inputs["input_ids"].shape[0]
    rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1).cpu()
    if rows.numel() == 0 or rows.min() < 0 or rows.max() >= num_prompts:
        raise ValueError(f"rows must be a non-empty list of indices in [0, {num_prompts}), got {rows.tolist()}")
    per_row = lambda v: [v] * len(rows) if v is None or isinstance(v, int) else [None if x is None else int(x) for x in v]
    starts, stops = per_row(start), per_row(stop)
    mm = inputs.get("mm_token_type_ids")
    has_images = "pixel_values" in inputs
    if has_images:
        if mm is None:
            raise ValueError("select_prompts needs mm_token_type_ids to know which images belong to which row")
        # Which images belong to which row: each image is one run of image tokens (type 1); the
        # runs of two images are separated by <|vision_end|><|vision_start|>.
        is_image = mm == 1                                                   # [B, P]
        images_per_row = (is_image & ~F.pad(is_image, (1, 0))[:, :-1]).sum(1).cpu()   # [B]
        grid = inputs["image_grid_thw"]  # [num images, 3] = (t, h, w) in patches, images in row order
        if int(images_per_row.sum()) != grid.shape[0]:
            raise ValueError(f"the prompts hold {int(images_per_row.sum())} images but image_grid_thw has "
                             f"{grid.shape[0]} rows; were the prompts encoded by encode_prompts?")
        first_image = torch.cumsum(images_per_row, 0) - images_per_row    # [B] index of each row's 1st image
        # pixel_values are flattened patches [sum of patches, D]: image i owns t*h*w consecutive rows.
        patches = grid.prod(-1).cpu()                                        # [num images]
        first_patch = torch.cumsum(patches, 0) - patches                     # [num images]
    pieces, images = [], []
    for r, a, b in zip(rows.tolist(), starts, stops):
        real = inputs["attention_mask"][r].bool()
        keep = torch.arange(int(real.sum()))[slice(a, b)]                    # positions among real tokens
        if keep.numel() == 0:
            raise ValueError(f"row {r}: the cut [{a}, {b}) holds no token")
        pieces.append({k: inputs[k][r][real][keep] for k in ("input_ids", "mm_token_type_ids") if k in inputs})
        if has_images:
            lo, hi = int(keep[0]), int(keep[-1]) + 1
            for j, (s, e) in enumerate(zip(*image_runs(mm[r][real]))):
                if lo <= s and e < hi:
                    images.append(int(first_image[r]) + j)
                elif s < hi and e >= lo:
                    raise ValueError(f"row {r}: the cut [{a}, {b}) splits image {j} (its tokens {s}..{e})")
    # Left padding: every row ends at the last column.
    width = max(len(p["input_ids"]) for p in pieces)
    pad = lambda t, value: F.pad(t, (width - len(t), 0), value=value)
    out = {"input_ids": torch.stack([pad(p["input_ids"], 0) for p in pieces]),
           "attention_mask": torch.stack([pad(torch.ones_like(p["input_ids"]), 0) for p in pieces])}
    if mm is not None:
        out["mm_token_type_ids"] = torch.stack([pad(p["mm_token_type_ids"], 0) for p in pieces])
    if images:
        out["image_grid_thw"] = grid[images]
        patch_rows = torch.cat([torch.arange(first_patch[i], first_patch[i] + patches[i]) for i in images])
        out["pixel_values"] = inputs["pixel_values"][patch_rows.to(inputs["pixel_values"].device)]
    return BatchFeature(out)


# ----------------------------------------------------------------------------------------------
# Scoring helpers: log pi(y_k | prompt, y_<k) for every answer token k (Alg. 1 lines 8-10).
# The path every phase uses encodes each prompt once for its G answers (prefix.py) and never holds
# [N, T, V] logits (head.py). Here: what both paths share (`check_answers`), and the plain path that
# the tests and bench.py check it against: the prompt repeated per answer, full logits.
def check_answers(answer_ids, answer_mask, rows):
    """Validate [N, T] answers (ids, mask True up to and including EOS) for N = len(rows) prompt rows."""
    n, t = answer_ids.shape
    if len(rows) != n or answer_mask.shape != (n, t) or t == 0:
        raise ValueError(f"need one prompt row per answer and answer_mask the shape of answer_ids [N, T>0]; got "
                         f"{len(rows)} prompt rows, answer_ids {tuple(answer_ids.shape)}, answer_mask "
                         f"{tuple(answer_mask.shape)}")
    mask = answer_mask.bool()
    if (mask[:, 1:] & ~mask[:, :-1]).any():
        raise ValueError("answer_mask must be True on a prefix of each row (the tokens up to and including "
                         "EOS) and False after it; a hole would change what later tokens were conditioned on")
    # Ids after EOS may be anything (pad, -100): they come after every real token and are masked
    # from attention, so any valid id does; 0 keeps the embedding lookup and gather in range.
    return torch.where(mask, answer_ids, 0), mask


def _token_logprobs(logits, token_ids):
    # [n, c, V] logits in the model's dtype -> [n, c] fp32 log-probs of the given tokens. The fp32
    # copy exists for one chunk only.
    logits = logits.float()
    return logits.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def answer_logprobs(logits, answer_ids, mask, *, chunk_size=32):
    """THE REFERENCE (tests, bench.py): [N, T, V] logits (logit j predicts answer token j) -> [N, T]
    fp32 log-probs, 0 where masked.
    Log-softmax in fp32, a chunk of positions at a time, so no [N, T, V] fp32 copy (bf16 model)
    or [N, T, V] logsumexp temporaries (any model) ever exist: extra memory N x chunk x V x 4 bytes.
    With grad, each chunk is recomputed in backward (checkpoint) instead of saving its fp32 copy.
    (`split`, not slicing: the backward of a slice allocates a zero [N, T, V] gradient per chunk.)"""
    if logits.shape[:2] != answer_ids.shape:
        raise ValueError(f"model returned logits {tuple(logits.shape)}; expected [{answer_ids.shape[0]}, "
                         f"{answer_ids.shape[1]}, V]")
    chunks = []
    for logits_chunk, ids_chunk in zip(logits.split(chunk_size, 1), answer_ids.split(chunk_size, 1)):
        if logits.requires_grad:
            chunks.append(torch.utils.checkpoint.checkpoint(_token_logprobs, logits_chunk, ids_chunk,
                                                            use_reentrant=False))
        else:
            chunks.append(_token_logprobs(logits_chunk, ids_chunk))
    return torch.cat(chunks, 1).masked_fill(~mask, 0.0)  # [N, T] fp32


def repeated_prompt_logprobs(model, prompts, rows, answer_ids, answer_mask):
    """THE REFERENCE PATH (tests and bench.py only): answer i scored with its prompt rows[i] repeated
    in front of it, one forward without a cache, so each prompt is encoded once PER ANSWER. The
    training path (prefix.py) must give the same numbers while encoding each prompt once."""
    answer_ids, mask = check_answers(answer_ids, answer_mask, rows)
    n, t = answer_ids.shape
    inputs = {k: v.to(answer_ids.device) for k, v in select_prompts(prompts, rows).items()}
    # Answer token k sits at sequence position P + k and is predicted by the logits at position
    # P + k - 1. So feed prompt + answer[:, :-1] (the last token predicts nothing we need) and keep
    # the logits of the last T positions: kept logit j predicts answer token j.
    inputs["input_ids"] = torch.cat([inputs["input_ids"], answer_ids[:, :-1]], 1)  # [N, P+T-1]
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], mask[:, :-1].long()], 1)
    if "mm_token_type_ids" in inputs:  # answer tokens are text (type 0)
        mm = inputs["mm_token_type_ids"]
        inputs["mm_token_type_ids"] = torch.cat([mm, mm.new_zeros(n, t - 1)], 1)
    logits = model(**inputs, logits_to_keep=t, use_cache=False).logits  # [N, T, V], model dtype
    return answer_logprobs(logits, answer_ids, mask)


# ----------------------------------------------------------------------------------------------
def check_compatible(student_processor, teacher_processor):
    """Refuse a student/teacher pair whose tokens or chat templates differ (docs/method.md sec. 8): the
    teacher must score exactly the student's token ids under the same conversation format.
    Compare tokenizers, NOT embedding row counts: Qwen2.5-VL 3B and 7B pad their embeddings to
    151,936 and 152,064 rows yet share one tokenizer, so the row count says nothing."""
    student_vocab, teacher_vocab = student_processor.tokenizer.get_vocab(), teacher_processor.tokenizer.get_vocab()
    if student_vocab != teacher_vocab:
        differ = sorted(set(student_vocab.items()) ^ set(teacher_vocab.items()), key=str)[:5]
        raise ValueError(f"student and teacher tokenizers differ ({len(student_vocab)} vs {len(teacher_vocab)} "
                         f"tokens; e.g. (token, id) in only one of them: {differ}); the teacher cannot score "
                         "the student's token ids")
    probe_student = _render(student_processor, 1, "What colour is the cup?")
    probe_teacher = _render(teacher_processor, 1, "What colour is the cup?")
    if probe_student != probe_teacher:
        raise ValueError(f"student and teacher chat templates render a probe prompt differently:\n"
                         f"student: {probe_student!r}\nteacher: {probe_teacher!r}")
