"""
Three-view teacher replay (paper Eqs. 8, 15-16; Algorithm 1, lines 8-10): the frozen teacher
scores the student's OWN sampled tokens, unchanged, under a view of the evidence:

    plain  (x)        the full image only: the teacher of plain OPD
    pos    (x, z+)    full image + crop of the question-relevant box: the distillation target
    neg    (x, z-)    full image + an irrelevant crop: used only by the gate (Eq. 17)

    teacher = Teacher(model, processor, student_processor=student_processor)
    lp = teacher.replay(rollout, full_images, questions, pos_crops=pos, neg_crops=neg)
    lp["pos"], lp["neg"]                                         # [B*G, T], 0 where masked

Cost: a tree per example, each node encoded once (prefix.py):

    [template, full image]                    shared by both crop views: one forward, one vision pass
       +-- [z+ crop, note, question]  ->  G answers
       +-- [z- crop, note, question]  ->  G answers

The (x, z+) and (x, z-) prompts are the same tokens up to the crop (model.teacher_prompts), so
their common part is encoded once and each view continues from it; each view's prompt is then
continued by its G answers. Checked at run time: the views must agree on that common part.
Exactness: the teacher's prompts are longer than the student's (two images), so answer token k sits
at another absolute position; prefix.score reads it from the logit at the teacher's own prompt end
+ k - 1 whatever that length is (docs/method.md sec. 8: the release gets this wrong for crop views).
Memory: `max_tokens` bounds the token positions one forward holds (rows x columns).
"""

import torch

from model import check_compatible, image_runs, select_prompts, student_prompts, teacher_prompts
from parallel import lockstep
from prefix import encode, packs, score

VIEWS = ("plain", "pos", "neg")


def crop_starts(prompts):
    """Per teacher prompt row: the index (among its real tokens) of its SECOND image's first token,
    where (x, z+) and (x, z-) begin to differ. [B] list of ints."""
    starts = []
    for mm, real in zip(prompts["mm_token_type_ids"], prompts["attention_mask"].bool()):
        runs, _ = image_runs(mm[real])
        if len(runs) != 2:
            raise ValueError(f"a teacher prompt holds {len(runs)} images; expected the full image and the crop")
        starts.append(runs[1])
    return starts


class Teacher:
    def __init__(self, model, processor, *, student_processor=None, max_tokens=None):
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"teacher max_tokens must be >= 1, got {max_tokens}")
        if student_processor is not None:
            check_compatible(student_processor, processor)   # once, here: same vocabulary and template
        # Frozen: eval mode (no dropout), no parameter ever asks for a gradient. The teacher is
        # never wrapped for training (an FSDP2-sharded teacher is fine: it is only ever run forward).
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.max_tokens = max_tokens   # token positions per forward; None: no bound

    def prompts(self, full_images, questions, *, pos_crops=None, neg_crops=None, views=("pos", "neg"), pixels=None):
        """The encoded prompts `replay` needs, one row per example and view (train.py encodes them
        for the next step in a background thread). pixels: see model.encode_prompts."""
        views = tuple(views)
        if not views or any(v not in VIEWS for v in views) or len(set(views)) != len(views):
            raise ValueError(f"views must be distinct names from {VIEWS}, got {views}")
        crops = {"pos": pos_crops, "neg": neg_crops}
        for view in views:
            if view != "plain" and (crops[view] is None or len(crops[view]) != len(full_images)):
                raise ValueError(f"view {view!r} needs one crop per example ({len(full_images)})")
        if len(questions) != len(full_images):
            raise ValueError(f"got {len(full_images)} images and {len(questions)} questions")
        # Crop views in one encoder call: prompt row v*B + b = crop view v of example b; the full
        # image, the same object in every view, is processed once.
        crop_views = [v for v in views if v != "plain"]
        return {"views": views, "examples": len(full_images),
                "plain": student_prompts(self.processor, full_images, questions, pixels=pixels) if "plain" in views else None,
                "crop": teacher_prompts(self.processor, list(full_images) * len(crop_views),
                                        [c for v in crop_views for c in crops[v]], list(questions) * len(crop_views),
                                        pixels=pixels) if crop_views else None}

    @torch.no_grad()
    def replay(self, rollout, full_images=None, questions=None, *, pos_crops=None, neg_crops=None,
               views=("pos", "neg"), prompts=None):
        """{view: [B*G, T] fp32 teacher log-probs of rollout.response_ids}, 0 where masked.

        full_images, questions, pos_crops, neg_crops: one per example (B), in rollout order; or the
        `prompts(...)` of them, encoded ahead."""
        if prompts is None:
            prompts = self.prompts(full_images, questions, pos_crops=pos_crops, neg_crops=neg_crops, views=views)
        views, B, plain, crop_prompts = prompts["views"], prompts["examples"], prompts["plain"], prompts["crop"]
        G = rollout.group_size
        N, T = rollout.response_ids.shape
        if N != B * G:
            raise ValueError(f"rollout has {N} rows = B*G with G={G}, but got {B} examples")
        device = next(self.model.parameters()).device
        ids, mask = rollout.response_ids.to(device), rollout.response_mask.to(device)
        out = {v: torch.zeros(N, T, dtype=torch.float32, device=device) for v in views}
        crop_views = [v for v in views if v != "plain"]
        starts = crop_starts(crop_prompts) if crop_views else None
        # Examples in packs whose answer forwards hold at most max_tokens positions in all. A sharded
        # teacher runs as many forwards on every rank (parallel.lockstep).
        # An example's cost: its views' answers, each row as long as its prompt + the answers.
        lengths = [p["attention_mask"].sum(1).view(-1, B) for p in (plain, crop_prompts) if p is not None]
        width = torch.cat(lengths).amax(0).tolist()                                 # [B] longest view prompt
        with lockstep(self.model):
            for pack in packs([len(views) * G * (w + T) for w in width], self.max_tokens):
                answers = torch.cat([torch.arange(b * G, (b + 1) * G) for b in pack])    # rollout rows [m*G]
                rows = torch.arange(len(pack)).repeat_interleave(G)                      # their prompt in the pack
                if plain is not None:
                    prefix = encode(self.model, _to(select_prompts(plain, pack), device), hold_last=True)
                    out["plain"][answers] = score(self.model, prefix, rows, ids[answers], mask[answers],
                                                  max_tokens=self.max_tokens)
                if crop_views:
                    self._crop_views(crop_prompts, starts, pack, B, crop_views, answers, ids, mask, out, device)
        return out

    def _crop_views(self, prompts, starts, pack, B, crop_views, answers, ids, mask, out, device):
        # The tree of the examples in `pack`. 1: [template, full image] of each example, once.
        G = len(answers) // len(pack)
        first = [starts[b] for b in pack]
        shared = select_prompts(prompts, pack, stop=first)
        for v in range(1, len(crop_views)):      # the views must agree up to the crop: what makes sharing exact
            other = select_prompts(prompts, [v * B + b for b in pack], stop=[starts[v * B + b] for b in pack])
            if any(not torch.equal(shared[k], other[k]) for k in shared):
                raise ValueError("the teacher's crop views differ before the crop; they cannot share a prefix")
        shared = encode(self.model, _to(shared, device))
        # 2: each view's rest [crop, note, question, assistant header], continuing its example's
        # row of `shared`. A continuation holds no padding (exact for linear attention too), so
        # rows of equal length go in one forward: all of them when crops and questions match.
        rest_rows = [(v, i) for v in range(len(crop_views)) for i in range(len(pack))]
        rest = select_prompts(prompts, [v * B + pack[i] for v, i in rest_rows],
                              start=[starts[v * B + pack[i]] for v, i in rest_rows])
        lengths = rest["attention_mask"].sum(1).tolist()
        for length in sorted(set(lengths)):
            same = [j for j, n in enumerate(lengths) if n == length]
            chunk = select_prompts(rest, same)
            prefix = encode(self.model, _to(chunk, device), past=shared,
                            rows=torch.tensor([rest_rows[j][1] for j in same]), hold_last=True)
            # 3: the G answers of each of these view rows continue it, in one forward.
            answer_rows = torch.cat([answers[rest_rows[j][1] * G:(rest_rows[j][1] + 1) * G] for j in same])
            logp = score(self.model, prefix, torch.arange(len(same)).repeat_interleave(G), ids[answer_rows],
                         mask[answer_rows], max_tokens=self.max_tokens)                # [len(same)*G, T]
            for k, j in enumerate(same):
                out[crop_views[rest_rows[j][0]]][answer_rows[k * G:(k + 1) * G]] = logp[k * G:(k + 1) * G]


def _to(inputs, device):
    return {k: v.to(device) for k, v in inputs.items()}
