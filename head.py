"""
The output head without vocabulary-sized logits: log pi(y_k) of the sampled tokens only.

V-Zero needs, per answer token, only the log-prob of the token that was sampled (the k1 and k3
estimator of Eq. 23 and k3 both): log pi(y_k) = h_k . W[y_k] - logsumexp_v(h_k . W[v]), with h_k the
model's final hidden state [H] and W the output head [V, H] (lm_head, or the embedding when they
are tied). Applying the head to every position first, as `model(...).logits` does, materialises
[N, T, V] logits: at Qwen3.5's V = 248,320 that is 16 GB for 8 answers of 2,048 tokens in bf16,
and as much again for their gradient in the update. Here the head is applied a BLOCK OF THE
VOCABULARY at a time, over all positions, so at most BLOCK_VALUES logits (positions x block
columns) exist at once:

    forward:   per block b: logits_b = h W_b^T [M, b] -> running logsumexp over blocks, and the
               target logit picked from the block that holds y_k; out = target - logsumexp.
    backward:  per block, logits_b recomputed (the forward saved only h, W and the [M] logsumexp):
               d out / d logits_b = onehot(y) - exp(logits_b - logsumexp), times the incoming grad,
               then grad_h += dlogits_b W_b and grad_W_b = dlogits_b^T h.

Why vocabulary blocks, not chunks of positions: each block of W's gradient is then ONE matmul over
all positions (as the full-logits path computes it, one rounding in bf16), instead of a sum of
per-chunk products that would need a [V, H] fp32 accumulator (2.5 GB for Qwen3.5-4B) or round
once per chunk. The sum over blocks lands in grad_h [M, H], in fp32: activation-sized, not V-sized.
Numbers: the matmul runs in the model's dtype and the softmax in fp32, as on the full-logits path
(`model.answer_logprobs`, the tests' oracle), so fp32 results agree to float rounding (~1e-6).

Tests: python -m pytest -q tests/test_head.py (against a full log-softmax, fp32 and bf16, gradients).
"""

import torch

# Logits held at once (positions x vocabulary columns): 2^24 = 64 MiB in fp32. A block is never
# narrower than MIN_COLUMNS, so a forward of very many positions still runs big matmuls.
BLOCK_VALUES, MIN_COLUMNS = 2**24, 256


def token_logprobs(hidden, weight, ids, bias=None):
    """hidden [M, H] final hidden states (the model's dtype), weight [V, H] the output head (and its
    bias [V], which no Qwen VLM has but tests use to steer sampling), ids [M] the sampled tokens ->
    [M] fp32 log pi(ids | ...). Differentiable in hidden, weight and bias."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1] or ids.shape != hidden.shape[:1]:
        raise ValueError(f"need hidden [M, H], weight [V, H], ids [M]; got {tuple(hidden.shape)}, "
                         f"{tuple(weight.shape)}, {tuple(ids.shape)}")
    if ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) < weight.shape[0]):
        # A full-logits gather would fail on such an id; a block loop would silently score it -logsumexp.
        raise ValueError(f"token ids must lie in [0, {weight.shape[0]}) (the head's rows); got "
                         f"[{int(ids.min())}, {int(ids.max())}]")
    return _TokenLogprobs.apply(hidden, weight, ids, bias)


def _columns(positions, vocab):
    # Block width: BLOCK_VALUES logits in all, at least MIN_COLUMNS wide, at most the vocabulary.
    return min(vocab, max(MIN_COLUMNS, BLOCK_VALUES // max(positions, 1)))


def _scratch(hidden, width):
    # Flat buffers every block is written into: (the model's dtype, fp32; one buffer for an fp32
    # model). Reused across blocks because a fresh 64 MiB block per step costs page faults that,
    # at small hidden sizes, take longer than the block's matmul.
    m = hidden.shape[0]
    wide = torch.empty(m * width, dtype=torch.float32, device=hidden.device)
    return (wide if hidden.dtype == torch.float32 else torch.empty(m * width, dtype=hidden.dtype,
                                                                   device=hidden.device)), wide


def _block_logits(hidden, weight, bias, lo, width, scratch):
    # [M, H] x [b, H] (+ [b]) -> [M, b] fp32, a view of scratch[1]: the product in the model's
    # dtype (as lm_head computes it: addmm / mm), then fp32 for the softmax.
    block = weight[lo:lo + width]
    size = hidden.shape[0] * block.shape[0]
    out, wide = (buffer[:size].view(hidden.shape[0], block.shape[0]) for buffer in scratch)
    if bias is None:
        torch.mm(hidden, block.T, out=out)
    else:
        torch.addmm(bias[lo:lo + width], hidden, block.T, out=out)
    return out if out is wide else wide.copy_(out)


class _TokenLogprobs(torch.autograd.Function):

    @staticmethod
    def forward(ctx, hidden, weight, ids, bias):
        m, vocab = hidden.shape[0], weight.shape[0]
        width = _columns(m, vocab)
        lse = torch.full((m,), -float("inf"), dtype=torch.float32, device=hidden.device)   # [M] running logsumexp
        target = torch.zeros(m, dtype=torch.float32, device=hidden.device)               # [M] h . W[y]
        scratch = _scratch(hidden, width)
        for lo in range(0, vocab, width):
            logits = _block_logits(hidden, weight, bias, lo, width, scratch)                # [M, b]
            inside = (ids >= lo) & (ids < lo + logits.shape[1])                            # y_k in this block
            picked = logits.gather(1, (ids - lo).clamp(0, logits.shape[1] - 1)[:, None]).squeeze(1)
            target = torch.where(inside, picked, target)
            # The block's logsumexp, the ops of torch.logsumexp in place (max, shift, exp, sum, log).
            top = logits.amax(-1)                                                          # [M]
            lse = torch.logaddexp(lse, logits.sub_(top[:, None]).exp_().sum(-1).log_().add_(top))
        ctx.save_for_backward(hidden, weight, ids, lse, bias)
        return target - lse

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, ids, lse, bias = ctx.saved_tensors    # grad: [M] d loss / d log pi(y_k)
        m, vocab = hidden.shape[0], weight.shape[0]
        width = _columns(m, vocab)
        want_hidden, want_weight, _, want_bias = ctx.needs_input_grad
        grad = grad.float()
        grad_hidden = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if want_hidden else None
        grad_weight = torch.empty_like(weight) if want_weight else None
        grad_bias = torch.empty_like(bias) if want_bias else None
        scratch = _scratch(hidden, width)
        for lo in range(0, vocab, width):
            block = weight[lo:lo + width]                                                  # [b, H]
            # d log pi(y_k) / d logits_kv = onehot(y_k)_v - softmax_v; times grad_k. In place: one [M, b].
            dlogits = _block_logits(hidden, weight, bias, lo, width, scratch).sub_(lse[:, None]).exp_().mul_(-grad[:, None])
            inside = (ids >= lo) & (ids < lo + block.shape[0])
            dlogits.scatter_add_(1, (ids - lo).clamp(0, block.shape[0] - 1)[:, None],
                                 torch.where(inside, grad, 0.0)[:, None])
            if dlogits.dtype != hidden.dtype:                  # matmuls in the model's dtype, as lm_head's backward
                dlogits = scratch[0][:dlogits.numel()].view(dlogits.shape).copy_(dlogits)
            if want_hidden:
                grad_hidden += dlogits @ block                                               # [M, H]
            if want_weight:
                torch.matmul(dlogits.T, hidden, out=grad_weight[lo:lo + width])              # [b, H]
            if want_bias:
                grad_bias[lo:lo + width] = dlogits.sum(0)
        return None if grad_hidden is None else grad_hidden.to(hidden.dtype), grad_weight, None, grad_bias
