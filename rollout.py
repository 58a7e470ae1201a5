"""
On-policy rollouts: the student samples G sibling responses per prompt from the FULL image only
(paper Eq. 1; Algorithm 1, lines 5-7). Sampled tokens are data: no gradient flows through here.

    prompts = model.student_prompts(processor, full_images, questions)       # B prompts
    ro = sample(student, processor, prompts, group_size=8, max_new_tokens=2048)
    ro.response_ids, ro.response_mask, ro.old_logp                            # [B*G, T]

Siblings are contiguous rows (b*G .. b*G+G-1), the layout gate.py expects. Each prompt is encoded
ONCE (prefix.py): `generate` continues its G siblings from that one prefill, and the same prefill
then scores the sampled tokens (old_logp). Greedy decoding (`greedy=True`, group_size=1) is what
eval.py uses. Works on a plain model, a DDP-wrapped model (sampling runs on the bare model) and an
FSDP2-sharded one (its parameters gathered once for the whole rollout: no collective per token).
"""

from dataclasses import dataclass

import torch

from model import select_prompts, vision_token_ids
from parallel import gathered
from prefix import GroupScorer, encode, packs, sampling_cache, score


@dataclass
class Rollout:
    prompt_inputs: dict        # the B student prompts [B, P] (+ pixel blocks); answer row r is prompt r // G
    response_ids: torch.Tensor   # [B*G, T] long, pad after EOS
    response_mask: torch.Tensor  # [B*G, T] bool, True up to and including the first EOS
    truncated: torch.Tensor      # [B*G] bool, True where no EOS came within max_new_tokens
    old_logp: torch.Tensor | None  # [B*G, T] fp32 log pi_s(y_k | x, y<k) at sampling time, 0 where
                                   # masked; None when sampled with old_logp=False (evaluation)
    group_size: int


def unwrap(model):
    """The bare transformers model inside DDP and the update's GroupScorer (FSDP2 shards in place)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return model.model if isinstance(model, GroupScorer) else model


def decode(processor, ro):
    """[N, T] response ids -> N strings. Tokens after the first EOS become padding first, so no
    sampled-after-EOS token (or a placeholder id that is a real word) reaches the text."""
    ids = torch.where(ro.response_mask, ro.response_ids, processor.tokenizer.pad_token_id)
    return processor.tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)


def response_mask_from(response_ids, eos_ids):
    """[N, T] bool: True up to and including the first EOS of each row; [N] truncated flags."""
    is_eos = torch.isin(response_ids, torch.as_tensor(eos_ids, device=response_ids.device))
    # Number of EOS strictly before position k: a token is valid while none came before it.
    eos_before = is_eos.long().cumsum(dim=1) - is_eos.long()
    return eos_before == 0, ~is_eos.any(dim=1)


@torch.no_grad()
def sample(model, processor, prompts, *, group_size, max_new_tokens, temperature=1.0, top_p=1.0,
           greedy=False, seed=None, old_logp=True, max_tokens=None, min_new_tokens=None):
    """Sample `group_size` responses for each of the B prompt rows of `prompts`; return a Rollout.

    seed: None (use the global RNG), an int (seeds the RNG once, then the generate calls), or a list
    of B ints: each prompt is then sampled by its own seeded generate call, so its samples do not
    depend on which other prompts share the batch (or the rank): the same run on 1 or 8 ranks
    samples the same tokens. Slower (B calls), so it is a choice, not the default.
    old_logp=False skips the old_logp forward (evaluation reads only the tokens).
    min_new_tokens: no EOS before this many tokens (the preflight samples every answer to its maximum).
    max_tokens bounds one generate call: prompts are sampled in packs holding at most this many
    cache positions, G x (prompt + max_new_tokens) per prompt (None: all in one call); the
    old_logp forwards hold at most as many."""
    if group_size < 1 or max_new_tokens < 1:
        raise ValueError(f"need group_size >= 1 and max_new_tokens >= 1, got {group_size}, {max_new_tokens}")
    if greedy and group_size > 1:
        raise ValueError("greedy decoding gives G identical siblings; use group_size=1 with greedy=True")
    if not greedy and not (temperature > 0 and 0 < top_p <= 1):
        raise ValueError(f"need temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    net = unwrap(model)
    device = next(net.parameters()).device
    G, num_prompts = group_size, prompts["input_ids"].shape[0]
    per_prompt_seeds = isinstance(seed, (list, tuple))
    if per_prompt_seeds and len(seed) != num_prompts:
        raise ValueError(f"got {len(seed)} seeds for {num_prompts} prompts")
    gen_cfg = net.generation_config
    eos_ids = gen_cfg.eos_token_id if isinstance(gen_cfg.eos_token_id, list) else [gen_cfg.eos_token_id]
    # Every sampling knob is set explicitly: real Qwen checkpoints ship generation configs with
    # top_k=1 / top_p=0.001 / repetition penalties that would silently change the policy we sample.
    knobs = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    # synced_gpus=False: transformers turns it on for FSDP models (an all-reduce per decoded token, so
    # ranks stop together); our ranks need none, the parameters are gathered (below).
    knobs.update(max_new_tokens=max_new_tokens, repetition_penalty=1.0, eos_token_id=eos_ids, synced_gpus=False,
                 pad_token_id=gen_cfg.pad_token_id, suppress_tokens=vision_token_ids(processor))  # could not be re-scored
    if min_new_tokens:
        knobs["min_new_tokens"] = min_new_tokens
    # Packs of prompts per generate call; per-prompt seeds: one prompt per call.
    packs_ = [[b] for b in range(num_prompts)] if per_prompt_seeds else \
        packs([G * (int(n) + max_new_tokens) for n in prompts["attention_mask"].sum(1)], max_tokens)

    was_training = net.training
    net.eval()
    # FSDP2: the student's parameters are gathered ONCE for sampling and scoring (parallel.gathered),
    # so no forward below, and no decoded token, runs a collective: ranks may take different
    # numbers of calls and decoding steps.
    with gathered(net), torch.random.fork_rng(devices=[device] if device.type == "cuda" else [],
                                               enabled=seed is not None):
        if seed is not None and not per_prompt_seeds:
            torch.manual_seed(seed)
        parts = []   # (the pack's prefix, each answer row's prompt in the pack, sampled tokens [n*G, t])
        for pack in packs_:
            if per_prompt_seeds:
                torch.manual_seed(seed[pack[0]])
            inputs = {k: v.to(device) for k, v in select_prompts(prompts, pack).items()}
            # One prefill per prompt (prefix.py), copied to its G sibling rows for generate to continue.
            prefix = encode(net, inputs, hold_last=True)
            rows = torch.arange(len(pack), device=device).repeat_interleave(G)       # siblings contiguous
            cache, rope_deltas = sampling_cache(net, prefix, rows)
            # generate positions each token it adds as (real tokens before it) + the model's stored
            # M-RoPE offset, which it set in its own prefill; ours ran outside it, so we set it here.
            net.model.rope_deltas = rope_deltas
            out = net.generate(input_ids=inputs["input_ids"][rows], attention_mask=inputs["attention_mask"][rows],
                               past_key_values=cache, **knobs)
            parts.append((prefix, rows, out[:, inputs["input_ids"].shape[1]:]))   # generate returns prompt + new
        # Right-pad the parts to one length T with the pad token (masked below anyway).
        T = max(p.shape[1] for _, _, p in parts)
        response_ids = torch.cat([torch.nn.functional.pad(p, (0, T - p.shape[1]), value=gen_cfg.pad_token_id)
                                  for _, _, p in parts])                              # [B*G, T]
        response_mask, truncated = response_mask_from(response_ids, eos_ids)
        # old_logp: log pi_s(y_k | x, y<k) of the sampled tokens under the student as it was when it
        # sampled, scored from the same prefill with the scoring function the update uses (as verl
        # recomputes them): the PPO ratio of the first update is 1, and memory stays bounded
        # (generate's per-step logits would be [T, N, V]). With temperature != 1 the tokens were
        # drawn from softmax(logits / temperature), but old_logp is still the policy's own
        # (temperature 1) log-prob, the quantity the loss differentiates: the ratio is pi_new / pi_old
        # of the policy, not an importance weight against the tempered sampling distribution.
        sampling_logp = None
        if old_logp:
            answers = torch.arange(len(response_ids)).split([len(rows) for _, rows, _ in parts])   # per pack
            sampling_logp = torch.cat([score(net, prefix, rows, response_ids[a], response_mask[a], max_tokens=max_tokens)
                                       for (prefix, rows, _), a in zip(parts, answers)])
    net.train(was_training)
    return Rollout(prompts, response_ids, response_mask, truncated, sampling_logp, group_size)

