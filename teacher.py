"""
Three-view teacher replay (paper Eqs. 8, 15-16; Algorithm 1, lines 8-10): the frozen teacher
scores the student's OWN sampled tokens, unchanged, under a view of the evidence:

    plain  (x)        the full image only: the teacher of plain OPD
    pos    (x, z+)    full image + crop of the question-relevant box: the distillation target
    neg    (x, z-)    full image + an irrelevant crop: used only by the gate (Eq. 17)

    teacher = Teacher(model, processor, student_processor=student_processor)
    lp = teacher.replay(rollout, full_images, questions, pos_crops=pos, neg_crops=neg)
    lp["pos"], lp["neg"]                                         # [B*G, T], 0 where masked

Exactness: the teacher's prompts are longer than the student's (two images), so response token k
sits at a different absolute position; model.sequence_logprobs scores token k from the logits at
teacher_prompt_len + k - 1 whatever that length is (PAPER.md sec. 8: the release gets this wrong
for crop views). Cost: each example's teacher prompts are encoded once and shared by its G
siblings, and the pos and neg rows of a micro-batch go through ONE forward pass, so V-Zero costs
one extra half-batch over positive-view OPD, not another round trip.
"""

import torch

from model import check_compatible, select_prompts, sequence_logprobs, student_prompts, teacher_prompts

VIEWS = ("plain", "pos", "neg")


class Teacher:
    def __init__(self, model, processor, *, student_processor=None, micro_batch_size=16):
        if micro_batch_size < 1:
            raise ValueError(f"teacher micro_batch_size must be >= 1, got {micro_batch_size}")
        if student_processor is not None:
            check_compatible(student_processor, processor)   # once, here: same vocabulary and template
        # Frozen: eval mode (no dropout), no parameter ever asks for a gradient. The teacher is
        # never wrapped for training (an FSDP2-sharded teacher is fine: it is only ever run forward).
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.micro_batch_size = micro_batch_size   # rollout rows per forward; x views in one pass

    @torch.no_grad()
    def replay(self, rollout, full_images, questions, *, pos_crops=None, neg_crops=None,
               views=("pos", "neg")):
        """{view: [B*G, T] fp32 teacher log-probs of rollout.response_ids}, 0 where masked.

        full_images, questions, pos_crops, neg_crops: one per example (B), in rollout order."""
        views = tuple(views)
        if not views or any(v not in VIEWS for v in views) or len(set(views)) != len(views):
            raise ValueError(f"views must be distinct names from {VIEWS}, got {views}")
        crops = {"pos": pos_crops, "neg": neg_crops}
        for view in views:
            if view != "plain" and (crops[view] is None or len(crops[view]) != len(full_images)):
                raise ValueError(f"view {view!r} needs one crop per example ({len(full_images)})")
        G, B = rollout.group_size, len(full_images)
        N = rollout.response_ids.shape[0]
        if N != B * G or len(questions) != B:
            raise ValueError(f"rollout has {N} rows = B*G with G={G}, but got {B} images and "
                             f"{len(questions)} questions")

        # Encode each view's prompts once per EXAMPLE (B rows each). The crop views go into one
        # encoder call so that one forward can hold both: prompt row v*B + b = view v of example b.
        crop_views = [v for v in views if v != "plain"]
        passes = []   # (views in this pass, their prompts)
        if "plain" in views:
            passes.append((["plain"], student_prompts(self.processor, full_images, questions)))
        if crop_views:
            all_crops = [c for v in crop_views for c in crops[v]]
            prompts = teacher_prompts(self.processor, list(full_images) * len(crop_views), all_crops,
                                      list(questions) * len(crop_views))
            passes.append((crop_views, prompts))

        device = next(self.model.parameters()).device
        ids, mask = rollout.response_ids.to(device), rollout.response_mask.to(device)
        out = {v: torch.zeros(N, ids.shape[1], dtype=torch.float32, device=device) for v in views}
        for pass_views, prompts in passes:
            V = len(pass_views)
            for start in range(0, N, self.micro_batch_size):
                rows = torch.arange(start, min(start + self.micro_batch_size, N))   # rollout rows
                example = rows // G                                                 # their prompts
                # [V*m] prompt rows: every view's copy of these rows, stacked view by view.
                prompt_rows = torch.cat([v * B + example for v in range(V)])
                logp = sequence_logprobs(self.model, select_prompts(prompts, prompt_rows),
                                         ids[rows].repeat(V, 1), mask[rows].repeat(V, 1))
                for v, view in enumerate(pass_views):                               # [V*m, T] -> views
                    out[view][rows] = logp[v * len(rows):(v + 1) * len(rows)]
        return out
