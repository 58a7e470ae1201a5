"""
Three-view teacher replay (paper Eqs. 8, 15-16; Algorithm 1, lines 8-10): the frozen teacher
scores the student's OWN sampled tokens, unchanged, under a view of the evidence:

    plain  (x)        the full image only: the teacher of plain OPD
    pos    (x, z+)    full image + crop of the question-relevant box: the distillation target
    neg    (x, z-)    full image + an irrelevant crop: used only by the gate (Eq. 17)

    teacher = Teacher(model, processor, student_processor=student_processor)
    prompts = teacher.prompts(full_images, questions, pos_crops=pos, neg_crops=neg, views=("pos", "neg"))
    lp = teacher.replay(rollout, prompts=prompts)
    lp["pos"], lp["neg"]                                         # [B*G, T], 0 where masked

What each view's numbers ARE, whatever the cost-saving below: lp[view][i, k] = log pi_t(y_k | view's
prompt, y_<k) for answer i's token k, exactly what one forward of [view's prompt, answer i] gives
(model.repeated_prompt_logprobs, the tests' reference). How they are computed: a tree per example,
each node encoded once (prefix.py):

    [template, full image]                    the trunk, shared by both crop views: one vision pass
       +-- [z+ crop, note, question]  ->  G answers        a branch, then its leaves
       +-- [z- crop, note, question]  ->  G answers

The (x, z+) and (x, z-) prompts are the same tokens up to the crop (model.teacher_prompts), so
their common part is encoded once and each view continues from it; each view's prompt is then
continued by its G answers. Checked at run time: the views must agree on that common part.
Exactness: the teacher's prompts are longer than the student's (two images), so answer token k sits
at another absolute position; prefix.score reads it from the logit at the teacher's own prompt end
+ k - 1 whatever that length is (docs/method.md sec. 8: the release gets this wrong for crop views).
Memory: `max_tokens` bounds the token positions one forward holds (rows x columns).
"""

from dataclasses import dataclass

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


@dataclass
class TeacherPrompts:
    """The encoded prompts of B examples under the views `replay` scores (Teacher.prompts makes them,
    train.py a step ahead in a background thread). The row layout, written once:
      plain   [B, P]: row b = the full image x of example b (the student's own prompt), or None;
      crops   [V*B, P']: row v*B + b = crop view crop_views[v] of example b: [full image, crop, note,
              question], or None;
      crop_start [V*B]: per crops row, where its crop's image tokens begin (among its real tokens):
              before it every crop view of an example is the same tokens."""
    views: tuple
    examples: int
    plain: dict | None
    crops: dict | None
    crop_start: list | None

    @property
    def crop_views(self):
        return tuple(v for v in self.views if v != "plain")

    def crop_row(self, view, b):
        return self.crop_views.index(view) * self.examples + b


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
        """The TeacherPrompts of B examples under `views`: one full image, question and (for a crop
        view) crop per example. pixels: see model.encode_prompts."""
        views = tuple(views)
        if not views or any(v not in VIEWS for v in views) or len(set(views)) != len(views):
            raise ValueError(f"views must be distinct names from {VIEWS}, got {views}")
        crops = {"pos": pos_crops, "neg": neg_crops}
        for view in views:
            if view != "plain" and (crops[view] is None or len(crops[view]) != len(full_images)):
                raise ValueError(f"view {view!r} needs one crop per example ({len(full_images)})")
        if len(questions) != len(full_images):
            raise ValueError(f"got {len(full_images)} images and {len(questions)} questions")
        crop_views = [v for v in views if v != "plain"]
        plain = student_prompts(self.processor, full_images, questions, pixels=pixels) if "plain" in views else None
        # Every crop view in one encoder call, in the row layout above; the full image, the same
        # object in every view, is processed once.
        crop_rows = None
        if crop_views:
            crop_rows = teacher_prompts(self.processor, list(full_images) * len(crop_views),
                                        [c for v in crop_views for c in crops[v]], list(questions) * len(crop_views),
                                        pixels=pixels)
        return TeacherPrompts(views, len(full_images), plain, crop_rows,
                              crop_starts(crop_rows) if crop_views else None)

    @torch.no_grad()
    def replay(self, rollout, full_images=None, questions=None, *, pos_crops=None, neg_crops=None, views=None,
               prompts=None):
        """{view: [B*G, T] fp32 log pi_t(y_k | view, y_<k)} of the rollout's tokens, 0 where masked.
        The B examples' views either encoded ahead (`prompts`, a TeacherPrompts) or given here: full
        images, questions and crops, one per example in rollout order, and the views (default pos, neg)."""
        if prompts is None:
            prompts = self.prompts(full_images, questions, pos_crops=pos_crops, neg_crops=neg_crops,
                                   views=views or ("pos", "neg"))
        elif any(x is not None for x in (full_images, questions, pos_crops, neg_crops, views)):
            raise ValueError("replay: give the encoded `prompts` (they carry their views) or the images to "
                             "encode, not both")
        B, G = prompts.examples, rollout.group_size
        N, T = rollout.response_ids.shape
        if N != B * G:
            raise ValueError(f"rollout has {N} rows = B*G with G={G}, but got {B} examples")
        device = next(self.model.parameters()).device
        ids, mask = rollout.response_ids.to(device), rollout.response_mask.to(device)
        out = {v: torch.zeros(N, T, dtype=torch.float32, device=device) for v in prompts.views}
        # Examples in packs whose forwards hold at most max_tokens positions in all; an example costs
        # its views' answers, each row as long as its longest view prompt + the answers. A sharded
        # teacher runs as many forwards on every rank (parallel.lockstep).
        lengths = [p["attention_mask"].sum(1).view(-1, B) for p in (prompts.plain, prompts.crops) if p is not None]
        width = torch.cat(lengths).amax(0).tolist()                                 # [B] longest view prompt
        with lockstep(self.model):
            for pack in packs([len(prompts.views) * G * (w + T) for w in width], self.max_tokens):
                if prompts.plain is not None:
                    out["plain"][_answer_rows(pack, G)] = self._plain_view(prompts, pack, ids, mask, G, device)
                if prompts.crops is not None:
                    for view, answers, logp in self._crop_tree(prompts, pack, ids, mask, G, device):
                        out[view][answers] = logp
        return out

    def _plain_view(self, prompts, pack, ids, mask, G, device):
        # The full image x: one prefix per example, its G answers continue it. [len(pack)*G, T]
        prefix = encode(self.model, _to(select_prompts(prompts.plain, pack), device), hold_last=True)
        answers = _answer_rows(pack, G)
        return score(self.model, prefix, torch.arange(len(pack)).repeat_interleave(G), ids[answers], mask[answers],
                     max_tokens=self.max_tokens)

    def _crop_tree(self, prompts, pack, ids, mask, G, device):
        """The crop views of the examples in `pack`, as the tree at the top of this file. Yields
        (view, rollout rows [G], their log-probs [G, T]) per (view, example) leaf."""
        # Level 1, the trunk: [template, full image] of each example, once for all its crop views.
        trunk = encode(self.model, _to(self._common_part(prompts, pack), device))          # len(pack) rows
        # Level 2, one branch per (view, example): the rest of its prompt [crop, note, question,
        # assistant header] continues its example's trunk row. A continuation holds no padding (exact
        # for linear attention too), so branches of equal length go in one forward: all of them
        # when the crops and questions are alike.
        branches = [(view, i, b) for view in prompts.crop_views for i, b in enumerate(pack)]   # i: trunk row
        rows = [prompts.crop_row(view, b) for view, _, b in branches]
        rest = select_prompts(prompts.crops, rows, start=[prompts.crop_start[r] for r in rows])
        lengths = rest["attention_mask"].sum(1).tolist()
        for length in sorted(set(lengths)):
            same = [j for j, n in enumerate(lengths) if n == length]
            prefix = encode(self.model, _to(select_prompts(rest, same), device), past=trunk,
                            rows=torch.tensor([branches[j][1] for j in same]), hold_last=True)
            # Level 3, the leaves: the G answers of each of these branches, in one forward.
            answers = [_answer_rows([branches[j][2]], G) for j in same]
            logp = score(self.model, prefix, torch.arange(len(same)).repeat_interleave(G), ids[torch.cat(answers)],
                         mask[torch.cat(answers)], max_tokens=self.max_tokens)                 # [len(same)*G, T]
            for k, j in enumerate(same):
                yield branches[j][0], answers[k], logp[k * G:(k + 1) * G]

    @staticmethod
    def _common_part(prompts, pack):
        # [template, full image] of each example in `pack`, cut from its first crop view. Every other
        # crop view must hold the very same tokens and image there: that is what makes sharing exact.
        def cut(view):
            rows = [prompts.crop_row(view, b) for b in pack]
            return select_prompts(prompts.crops, rows, stop=[prompts.crop_start[r] for r in rows])
        first, *others = prompts.crop_views
        shared = cut(first)
        for view in others:
            other = cut(view)
            if any(not torch.equal(shared[k], other[k]) for k in shared):
                raise ValueError("the teacher's crop views differ before the crop; they cannot share a prefix")
        return shared


def _answer_rows(examples, G):
    # The rollout rows of these examples' answers: example b's G siblings are rows b*G .. b*G+G-1.
    return torch.cat([torch.arange(b * G, (b + 1) * G) for b in examples])


def _to(inputs, device):
    return {k: v.to(device) for k, v in inputs.items()}
