"""
The transformers internals prefix.py relies on (listed at its top), each checked by name: a new
transformers release that renames or changes one fails HERE, saying which, instead of silently
giving wrong log-probs in training. Checked with transformers 5.23.0.

    python -m pytest -q tests/test_internals.py
"""

import inspect

import pytest
import torch
from PIL import Image
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, LinearAttentionLayer
from transformers.modeling_layers import GradientCheckpointingLayer

import model as M
import prefix as X


def has(obj, name, what):
    assert hasattr(obj, name), f"transformers changed an internal prefix.py relies on: {what} has no `{name}`"


def takes(fn, params, what):
    names = set(inspect.signature(fn).parameters)
    missing = [p for p in params if p not in names]
    assert not missing, f"transformers changed an internal prefix.py relies on: {what} no longer takes {missing}"


def test_cache_layer_fields_and_methods():
    attention = DynamicLayer()
    for name in ("keys", "values", "lazy_initialization", "get_seq_length", "update"):
        if name in ("keys", "values"):
            attention.lazy_initialization(torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))
        has(attention, name, "cache_utils.DynamicLayer")
    takes(DynamicLayer.update, ["key_states", "value_states"], "DynamicLayer.update")
    linear = LinearAttentionLayer(number_of_states=1)
    for name in ("conv_states", "recurrent_states", "conv_kernel_size", "has_previous_state",
                 "is_conv_states_initialized", "is_recurrent_states_initialized", "record_past"):
        has(linear, name, "cache_utils.LinearAttentionLayer")
        if name != "record_past":
            assert 0 in getattr(linear, name) or len(getattr(linear, name)) == 1, (
                f"LinearAttentionLayer.{name} is no longer indexed by state (prefix.py reads [0])")
    takes(LinearAttentionLayer.lazy_initialization, ["conv_states", "recurrent_states", "conv_kernel_size"],
          "LinearAttentionLayer.lazy_initialization")
    takes(LinearAttentionLayer.update_conv_state, ["conv_states", "state_idx", "conv_kernel_size"],
          "LinearAttentionLayer.update_conv_state")
    takes(LinearAttentionLayer.update_recurrent_state, ["recurrent_states", "state_idx"],
          "LinearAttentionLayer.update_recurrent_state")
    takes(Cache.__init__, ["layers"], "cache_utils.Cache")


def test_gradient_checkpointing_reads_the_flag_we_set():
    has(GradientCheckpointingLayer, "_can_checkpoint_with_cache", "modeling_layers.GradientCheckpointingLayer")
    assert "if not self._can_checkpoint_with_cache" in inspect.getsource(GradientCheckpointingLayer), (
        "GradientCheckpointingLayer no longer reads _can_checkpoint_with_cache: checkpointed layers may drop or "
        "double the prefix cache")


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "qwen3_5"])
def test_model_internals_and_call_order(family, monkeypatch):
    model, processor = M.load(f"tiny:{family}")
    inner = model.model
    takes(inner.get_rope_index, ["input_ids", "mm_token_type_ids", "image_grid_thw", "attention_mask"],
          f"{family} model.model.get_rope_index")
    has(inner, "rope_deltas", f"{family} model.model")
    # generate positions continued tokens from model.model.rope_deltas (rollout.py sets it).
    assert "self.model.rope_deltas" in inspect.getsource(type(model)), (
        f"{family}: generate no longer reads model.model.rope_deltas")
    # Which cache layers the model has: prefix._empty maps them to its own kinds.
    kinds = {type(layer) for layer in DynamicCache(config=model.config).layers}
    assert kinds <= {DynamicLayer, LinearAttentionLayer}, f"{family}: new cache layer kinds {kinds}"
    # The call order encode() assumes: ONE update per layer per forward (then next_past reads `added`).
    calls = []
    for cls, name in ((X._Attention, "update"), (X._Recurrent, "update_conv_state"),
                      (X._Recurrent, "update_recurrent_state")):
        real = getattr(cls, name)

        def spy(self, *args, _real=real, _name=name, **kwargs):
            calls.append((id(self), _name))
            return _real(self, *args, **kwargs)
        monkeypatch.setattr(cls, name, spy)
    prompts = M.student_prompts(processor, [Image.new("RGB", (64, 64))], ["What colour is the cup?"])
    with torch.no_grad():
        prefix = X.encode(model, dict(prompts), hold_last=True)
    assert len(calls) == len(set(calls)), f"{family}: a cache layer was updated more than once in one forward"
    per_layer = {layer_id for layer_id, _ in calls}
    assert len(per_layer) == model.config.get_text_config().num_hidden_layers, (
        f"{family}: not every decoder layer updated its cache in the forward")
    assert all(layer.get_seq_length() > 0 if isinstance(layer, X._Attention) else layer.has_previous_state[0]
               for layer in prefix.layers)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_5"])
def test_final_hidden_states_and_empty_logits_to_keep(family):
    # head.py applies the output head itself to model.model's output[0]; the model's own head must
    # compute nothing when logits_to_keep is an empty index tensor.
    model, processor = M.load(f"tiny:{family}")
    prompts = dict(M.student_prompts(processor, [Image.new("RGB", (64, 64))], ["What colour is the cup?"]))
    seen = {}
    hook = model.model.register_forward_hook(lambda module, args, output: seen.update(hidden=output[0]))
    with torch.no_grad():
        full = model(**prompts).logits                                              # [1, P, V]
        none = model(**prompts, logits_to_keep=torch.zeros(0, dtype=torch.long)).logits
    hook.remove()
    assert none.shape[1] == 0, f"{family}: an empty logits_to_keep no longer skips the head"
    torch.testing.assert_close(model.get_output_embeddings()(seen["hidden"]), full, rtol=1e-5, atol=1e-5,
                               msg=f"{family}: model.model's output[0] is no longer the head's input")
