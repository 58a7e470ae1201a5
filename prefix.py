"""
Shared prompt prefixes: encode each prompt ONCE, then let its G answers continue from it.

Every phase of a V-Zero step works on groups: one prompt, G sampled answers. The prompt is a full
image of up to 16.7 MP (~16k tokens) plus the question; an answer is tens to hundreds of tokens.
Repeating the prompt for each answer (the plain way) does G times the prompt work in sampling,
in the sampling-time log-probs, in both teacher views and in the update, and in the update also
holds G copies of the prompt's activations. Here the prompt is encoded once:

    prefix = encode(model, prompts, hold_last=True)       # one forward over the B prompts
    logp = score(model, prefix, rows, answer_ids, mask)   # [N, T]: answer i continues prompt rows[i]
    cache, rope_deltas = sampling_cache(model, prefix, rows)   # what `generate` continues from (rollout.py)

Why it is exact. A causal model's answer tokens attend to the prompt's keys and values, and those
do not depend on the answer. So the keys/values of the prompt are computed once (B rows), copied
to the answer rows (`rows`, e.g. [0]*G + [1]*G + ...) and every answer attends to the very numbers
the repeated path computes. Qwen3.5's linear-attention layers carry no keys/values: there the
answer continues from the prompt's recurrent state and causal-conv window, which are per row and
copied the same way. Positions (M-RoPE) continue where the prompt ended. What differs from the
repeated path is float rounding of other matrix shapes (~1e-6 in fp32).

The prompt's last token is held back (`hold_last`) and enters together with the answer: the answer
forward's first logit, at the prompt's last position, scores answer token 0. So a prefix needs no
logits, and `generate` (which needs one token it has not seen) continues from the same prefix.

A prefix can be continued by another chunk before the answers: the teacher's two views share the
full image and differ from the crop on, so `teacher.py` encodes [template, full image] once, then
each crop view as a second chunk (`encode(..., past=shared, rows=...)`), then the answers (a tree).

With gradients (the update) the cache must never be changed in place after a forward read it
(autograd saved it), and gradient checkpointing re-runs each layer's forward in backward. So the
cache's TENSORS are never written: a forward reads the past tensors and records the tensors it
added in the layer object's `added*` fields (the one thing a forward writes, on a throwaway Prefix
that `continued()` makes for that forward); `encode` then builds a new Prefix of past + added
(`next_past()`). Re-running a layer reads the same past and records the same.

What this file relies on in transformers (checked with 5.23.0; tests/test_internals.py fails, naming
the internal, if a release changes one):
  - cache_utils.DynamicLayer: fields `keys`, `values`, `lazy_initialization(keys, values)`,
    `get_seq_length()`; the attention modules call `update(key_states, value_states, ...)` ONCE per
    layer per forward and attend to what it returns (the order `encode` assumes: one forward, then
    `next_past()` reads each layer's `added`).
  - cache_utils.LinearAttentionLayer(number_of_states=1): fields `conv_states`, `recurrent_states`,
    `conv_kernel_size`, `has_previous_state`, `is_conv_states_initialized`,
    `is_recurrent_states_initialized`, `record_past` (True keeps Qwen3.5 on its general path: its
    one-token path updates the conv window in place), `lazy_initialization(conv_states=,
    recurrent_states=, conv_kernel_size=)`; Qwen3.5's layers call `update_conv_state(conv_states, ...)`
    and `update_recurrent_state(recurrent_states, ...)` once each per forward.
  - cache_utils.Cache(layers=[...]) and DynamicCache(config=...).layers (which layer kinds a model has).
  - modeling_layers.GradientCheckpointingLayer._can_checkpoint_with_cache: False makes transformers
    drop the cache of checkpointed layers; we set it True (enable_gradient_checkpointing).
  - The Qwen models' `model.model.get_rope_index(input_ids, mm_token_type_ids, image_grid_thw=,
    attention_mask=)` (M-RoPE positions) and `model.model.rope_deltas`, the offset `generate`
    positions new tokens with (rollout.py sets it from `sampling_cache`); forwards take explicit
    `position_ids` [3, n, L], `past_key_values` and `logits_to_keep` (an empty index tensor: the
    model's own head computes nothing), and the inner `model.model`'s output[0] is the final hidden
    state after the last norm, which `model.get_output_embeddings()` turns into logits (the hook
    `_apply_head` reads it there).

Tests: python -m pytest -q tests/test_prefix.py (against the repeated-prompt path, three families).
"""

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, LinearAttentionLayer
from transformers.modeling_layers import GradientCheckpointingLayer

from head import token_logprobs
from model import check_answers


# ----------------------------------------------------------------------------------------------
# The cache: per layer the PAST (read only) and what the current forward ADDED.
class _Attention(DynamicLayer):
    """An attention layer's past keys/values [n, heads, C, d]; `update` returns past + new and
    records the new ones in `added`, so a forward (and its replay under gradient checkpointing)
    leaves the past as it was."""

    def __init__(self, keys=None, values=None):
        super().__init__()
        if keys is not None:
            self.lazy_initialization(keys, values)
            self.keys, self.values = keys, values
        self.added = None

    def update(self, key_states, value_states, *args, **kwargs):
        self.added = (key_states, value_states)   # [n, heads, L, d]
        if self.get_seq_length() == 0:
            return key_states, value_states
        return torch.cat([self.keys, key_states], -2), torch.cat([self.values, value_states], -2)

    def next_past(self):
        # past + added: the past of the next chunk.
        keys, values = self.added
        if self.get_seq_length() > 0:
            keys, values = torch.cat([self.keys, keys], -2), torch.cat([self.values, values], -2)
        return _Attention(keys, values)


class _Recurrent(LinearAttentionLayer):
    """A linear-attention layer's past: its causal-conv window [n, channels, kernel] and recurrent
    state [n, heads, dk, dv]. Same contract as _Attention: the past is read, never written; a
    forward records its new window and state in `added_conv`, `added_recurrent`."""

    def __init__(self, conv=None, recurrent=None):
        super().__init__(number_of_states=1)
        # "Recording the past" keeps the model on its general path: its one-token fast path would
        # update the conv window in place (transformers' causal_conv1d_update).
        self.record_past = True
        if conv is not None:
            self.conv_states[0], self.recurrent_states[0] = conv, recurrent
            self.conv_kernel_size[0] = conv.shape[-1]
            self.has_previous_state[0] = True
            self.is_conv_states_initialized[0] = self.is_recurrent_states_initialized[0] = True
        self.added_conv = self.added_recurrent = None

    def update_conv_state(self, conv_states, state_idx=0, conv_kernel_size=None, **kwargs):
        # conv_states: [n, channels, L], this chunk's inputs to the causal conv. The model convolves
        # what we return (past window + new) and keeps the last L outputs.
        full = conv_states if not self.has_previous_state[0] else torch.cat([self.conv_states[0], conv_states], -1)
        kernel = conv_kernel_size or self.conv_kernel_size[0]
        # The next window, copied out: a view would keep this chunk's whole [n, channels, L] input alive.
        self.added_conv = F.pad(full, (max(0, kernel - full.shape[-1]), 0))[..., -kernel:].contiguous()
        return full

    def update_recurrent_state(self, recurrent_states, state_idx=0, **kwargs):
        self.added_recurrent = recurrent_states      # [n, heads, dk, dv], the state after this chunk
        return recurrent_states

    def next_past(self):
        return _Recurrent(self.added_conv, self.added_recurrent)


class Prefix(Cache):
    """Encoded prompt prefixes of n rows: per layer the cached states, plus what the next chunk
    needs to continue a row: `mask` [n, C] (its columns, left padding 0), `next_pos` [n] (the
    M-RoPE position of its next token) and `tail` [n] (the held-back last prompt token, or None)."""

    def __init__(self, layers, mask, next_pos, tail=None):
        super().__init__(layers=layers)
        self.mask, self.next_pos, self.tail = mask, next_pos, tail

    @property
    def rows(self):
        return self.mask.shape[0]

    def continued(self, rows):
        # A cache for a forward that continues each of these rows (repetition allowed): same past.
        rows = torch.as_tensor(rows, device=self.mask.device)
        return Prefix([_select(layer, rows) for layer in self.layers], self.mask[rows], self.next_pos[rows],
                      None if self.tail is None else self.tail[rows])


def _select(layer, rows):
    if isinstance(layer, _Attention):
        return _Attention(layer.keys[rows], layer.values[rows]) if layer.get_seq_length() else _Attention()
    return _Recurrent(layer.conv_states[0][rows], layer.recurrent_states[0][rows]) \
        if layer.has_previous_state[0] else _Recurrent()


def _empty(model, rows, device):
    # An empty prefix of `rows` rows, one layer per decoder layer of the model's own kind.
    kinds = []
    for layer in DynamicCache(config=model.config).layers:
        if type(layer) is DynamicLayer:
            kinds.append(_Attention())
        elif type(layer) is LinearAttentionLayer:
            kinds.append(_Recurrent())
        else:   # sliding-window, hybrid, ... layers: not in the Qwen families this project supports
            raise ValueError(f"shared prefixes do not support {type(layer).__name__} cache layers")
    return Prefix(kinds, torch.zeros(rows, 0, dtype=torch.long, device=device),
                  torch.zeros(rows, dtype=torch.long, device=device))


# ----------------------------------------------------------------------------------------------
def rope_positions(model, chunk):
    """[3, n, L] M-RoPE positions (time, height, width) of a left-padded chunk, counted from 0:
    the model's own `get_rope_index`, so vision tokens get their 2-D grid positions. A chunk that
    continues a prefix adds the prefix's `next_pos` (positions are cumulative: exact)."""
    ids, mask = chunk["input_ids"], chunk["attention_mask"]
    mm = chunk.get("mm_token_type_ids")
    if mm is None or not bool((mm != 0).any()):            # text only: 0, 1, 2, ... over real tokens
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return pos[None].expand(3, -1, -1)
    pos, _ = model.model.get_rope_index(ids, mm, image_grid_thw=chunk.get("image_grid_thw"), attention_mask=mask)
    return pos


def encode(model, chunk, *, past=None, rows=None, hold_last=False):
    """One forward over `chunk` (a left-padded batch of prompt pieces, n rows, with their images:
    input_ids, attention_mask, mm_token_type_ids, pixel_values, image_grid_thw), each row continuing
    row rows[i] of `past` (or starting fresh). Returns the Prefix of past + chunk. hold_last: the
    chunk ends a prompt; its last token is kept aside as the Prefix's `tail`, not encoded.
    Left padding is exact only at the start of a sequence (a linear-attention state would decay
    over padding in the middle), so a chunk that continues a past must hold no padding."""
    device = chunk["input_ids"].device
    n = chunk["input_ids"].shape[0]
    if past is None:
        past = _empty(model, n, device)
    else:
        past = past.continued(torch.arange(past.rows, device=device) if rows is None else rows)
        if past.rows != n or not bool(chunk["attention_mask"].all()):
            raise ValueError(f"a chunk continuing a prefix needs one row per selected prefix row ({past.rows}) "
                             f"and no padding; got {n} rows, padding {not bool(chunk['attention_mask'].all())}")
    tail = None
    if hold_last:   # left padding: the last column is a real token in every row
        tail, mm = chunk["input_ids"][:, -1], chunk.get("mm_token_type_ids")
        if mm is not None and bool(mm[:, -1].any()):
            raise ValueError("a prompt must end with text (the chat template's assistant header), not an image")
        chunk = {k: v[:, :-1] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v
                 for k, v in chunk.items()}
    positions = rope_positions(model, chunk) + past.next_pos[None, :, None]          # [3, n, L]
    mask = torch.cat([past.mask, chunk["attention_mask"].long()], 1)                # [n, C + L]
    images = {k: chunk[k] for k in ("pixel_values", "image_grid_thw") if k in chunk}
    # ONE call through `model` itself (it may be FSDP-sharded: its hooks gather the parameters).
    # logits_to_keep=1: a prefix needs no logits; one position is the least the model computes.
    logits = model(input_ids=chunk["input_ids"], attention_mask=mask, position_ids=positions, past_key_values=past,
                   use_cache=True, logits_to_keep=1, **images).logits
    if not bool(torch.isfinite(logits).all()):     # a cheap check of the whole forward: [n, 1, V]
        raise FloatingPointError("the model's outputs are not finite")
    next_pos = positions.amax(dim=(0, 2)) + 1                                       # [n]
    return Prefix([layer.next_past() for layer in past.layers], mask, next_pos, tail)


def score(model, prefix, rows, answer_ids, answer_mask, *, max_tokens=None):
    """log pi(y_k | prompt, y_<k) [N, T] fp32 of every answer token, 0 where answer_mask is False.
    Answer i continues prefix row rows[i] (siblings: rows = [0]*G + [1]*G + ...). One forward.

    Alignment: the forward's input is [held-back prompt token, y_0 .. y_{T-2}] (T tokens): the final
    hidden state j sits at the position of the token that precedes y_j, so it scores y_j, first and
    last alike. No [N, T, V] logits: the model runs to its final hidden states and head.py applies
    the output head a vocabulary block at a time, to the unmasked positions only.
    max_tokens (no gradients): score the answers in parts, see below."""
    answer_ids, mask = check_answers(answer_ids, answer_mask, rows)
    if prefix.tail is None:
        raise ValueError("score: the prefix must end its prompts (encode(..., hold_last=True))")
    n, t = answer_ids.shape
    rows = torch.as_tensor(rows, device=prefix.mask.device)
    if max_tokens is not None and n > 1:
        # Memory bound without gradients: a part of the answers at a time, each part's forward
        # holding at most max_tokens positions (answers x (prefix + answer length)); same prefix.
        per_row = prefix.mask.shape[1] + 1 + t
        parts = torch.arange(n).split(max(1, max_tokens // per_row))
        if len(parts) > 1:
            return torch.cat([score(model, prefix, rows[p], answer_ids[p], mask[p]) for p in parts])
    return _apply_head(model, answer_inputs(prefix, rows, answer_ids, mask), answer_ids, mask)


def answer_inputs(prefix, rows, answer_ids, mask):
    """The answer forward's keyword arguments: answer i continues prefix row rows[i]; its input is
    [held-back prompt token, y_0 .. y_{T-2}], so position j's final hidden state scores y_j."""
    past = prefix.continued(rows)
    t = answer_ids.shape[1]
    inputs = torch.cat([past.tail[:, None], answer_ids[:, :-1]], 1)                  # [N, T]
    attention = torch.cat([past.mask, torch.ones_like(mask[:, :1]), mask[:, :-1]], 1).long()   # [N, C + T]
    positions = (past.next_pos[:, None] + torch.arange(t, device=inputs.device))[None].expand(3, -1, -1)
    return dict(input_ids=inputs, attention_mask=attention, position_ids=positions, past_key_values=past,
                use_cache=True)


def _apply_head(model, inputs, answer_ids, mask):
    # One call through `model` (FSDP2's hooks gather, DDP's one forward) that stops at the final
    # hidden states [N, T, H] and applies the output head to the unmasked positions (head.py).
    n, t = answer_ids.shape
    head = model.get_output_embeddings()           # lm_head [V, H], or the input embedding when tied
    out = {}

    def apply_head(module, args, output):
        # Runs inside the model's own forward, right after its decoder: the parameters of FSDP2's
        # root unit (lm_head, embeddings) are gathered here, and under DDP it is part of the one
        # module call. output[0]: the final hidden states [N, T, H], after the last norm.
        out["logp"] = token_logprobs(output[0][mask], head.weight, answer_ids[mask], head.bias)   # [unmasked]
    hook = model.model.register_forward_hook(apply_head)
    try:
        # logits_to_keep = no position: the model's own head computes nothing ([N, 0, V]).
        model(**inputs, logits_to_keep=torch.zeros(0, dtype=torch.long, device=answer_ids.device))
    finally:
        hook.remove()
    return torch.zeros(n, t, dtype=torch.float32, device=answer_ids.device).masked_scatter(mask, out["logp"])  # [N, T] fp32


def sampling_cache(model, prefix, rows):
    """(cache, rope_deltas): a stock transformers cache holding prefix rows `rows` for `generate` to
    continue (it grows the cache in place as it decodes, which is fine without gradients), and the
    M-RoPE offset [n, 1] the caller must store as `model.model.rope_deltas` before `generate`:
    generate positions every token it adds from it (and sets it only in a prefill of its own)."""
    past = prefix.continued(rows)
    cache = DynamicCache(config=model.config)
    for stock, layer in zip(cache.layers, past.layers):
        if isinstance(layer, _Attention):
            stock.update(layer.keys, layer.values)
        else:
            stock.lazy_initialization(conv_states=layer.conv_states[0], recurrent_states=layer.recurrent_states[0],
                                      conv_kernel_size=layer.conv_kernel_size[0])
            stock.conv_states[0].copy_(layer.conv_states[0])
            stock.recurrent_states[0].copy_(layer.recurrent_states[0])
            stock.has_previous_state[0] = True
    # generate counts a token's text position as (real tokens before it) and adds rope_deltas; the
    # held-back token must land on next_pos.
    return cache, (past.next_pos - past.mask.sum(1))[:, None]


class GroupScorer(torch.nn.Module):
    """The student as the update calls it: ONE forward encodes the prompts once and scores their
    answers (answer i continues prompt rows[i]). DDP expects one forward per backward, and both
    calls (prefix, answers) must be inside it; DDP and FSDP2 wrap or shard `.model` as usual."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, prompts, rows, answer_ids, answer_mask):
        return score(self.model, encode(self.model, prompts, hold_last=True), rows, answer_ids, answer_mask)


def enable_gradient_checkpointing(model):
    """transformers' gradient checkpointing (each decoder layer's activations recomputed in
    backward), told that a layer may read a cache in its replay: transformers drops the cache of
    checkpointed layers because its own caches grow in place, so a replay would append twice.
    Ours never write their past (see the top of this file): the replay reads the same past and
    records the same `added`."""
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module._can_checkpoint_with_cache = True


def packs(costs, budget):
    """Split items (prompts, groups) into consecutive packs whose costs (token positions a forward
    holds) sum to at most `budget`; an item above the budget alone is a pack of its own. None: one pack."""
    out, total = [], 0          # total: the cost of the last pack
    for i, cost in enumerate(costs):
        if out and (budget is None or total + cost <= budget):
            out[-1].append(i)
            total += cost
        else:
            out.append([i])
            total = cost
    return out
