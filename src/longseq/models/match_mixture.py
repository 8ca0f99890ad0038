"""A frame-pair model with locality and copy priors: local matching plus a mixture head.

Like an LRAS model it predicts, for every patch slot of frame 1, a distribution over
the codes of a patch quantizer, given all of frame 0 and a random subset of
revealed frame-1 patches. Its structure is the one of motion in a video:

1. **Matching (a cost volume).** Each revealed frame-1 patch is compared with every
   frame-0 window within ``max_disp`` pixels; a softmax over the costs (plus a
   small-motion prior) gives its displacement, refined to sub-pixel precision by a
   local soft-argmax around the best match.
2. **Motion hypotheses.** Every revealed patch proposes "hidden patches move as I
   do"; a *null* hypothesis proposes "nothing moved" and a *new-content* hypothesis
   stands for disoccluded content. A hidden slot weighs the hypotheses by distance
   to the revealed patch, by the match's confidence, and by the affinity of CNN
   features of frame 0 at the two source points (the same surface moves alike).
3. **Copying.** Under a hypothesis the slot's patch is frame 0 sampled at the slot
   minus the displacement (bilinear, so sub-pixel motion is kept).
4. **A mixture head.** Each hypothesis is one component of the distribution over
   codes: ``p(k) = sum_h w_h softmax_k(-beta ||codeword_k - patch_h||^2 + b_k)``.
   ``head="mode"`` keeps only the most likely hypothesis and ``head="mean"``
   averages the hypotheses' patches into one (a regression head): the ablations of
   the distributional output.

``camera=True`` (the shipped model) adds what real photographs need: matching costs
are measured relative to the revealed patch's own contrast (plain texture still picks
its displacement instead of the smallest one), a revealed patch proposes its motion in
proportion to how distinct its match is (the peak of its match softmax), and a *camera*
hypothesis proposes the affine motion fitted to all the matches (weighted least
squares, reweighted so that another moving layer or a wrong match does not pull it), so
a slot moves with the whole frame to sub-pixel precision even where its own texture is
too plain to match.

``reveal_conditioning=False`` ignores the revealed patches (only the null and
new-content hypotheses remain): the ablation of random-access conditioning.

The model implements the frame-pair protocol of :mod:`longseq.kltrace`
(:meth:`frame1_logprobs`, ``image_size``, ``patch``, ``codebook``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from longseq.models.config import ConfigDict
from longseq.models.lras import PatchQuantizer

HEADS = ("mixture", "mode", "mean")


@dataclass
class MatchMixtureConfig(ConfigDict):
    image_size: int = 32
    patch: int = 4
    codebook_size: int = 512
    max_disp: int = 8  # cost-volume search radius, pixels of the model input
    feat_dim: int = 16  # affinity features of frame 0
    feat_channels: int = 24
    head: str = "mixture"  # "mixture" | "mode" | "mean"
    reveal_conditioning: bool = True
    camera: bool = False  # add the camera hypothesis (an affine fit of all the matches)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch

    @property
    def n_slots(self) -> int:
        return self.grid**2


class MatchMixture(nn.Module):
    """Local-matching mixture model of frame pairs (see the module docstring)."""

    def __init__(self, cfg: MatchMixtureConfig) -> None:
        super().__init__()
        if cfg.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {cfg.head!r}")
        if cfg.image_size % cfg.patch:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of {cfg.patch}")
        self.config = cfg
        self.quantizer = PatchQuantizer(cfg.codebook_size, cfg.patch)
        c = cfg.feat_channels
        self.features = nn.Sequential(  # affinity features of frame 0, full resolution
            nn.Conv2d(3, c, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(c, c, 3, padding=2, dilation=2),
            nn.SiLU(),
            nn.Conv2d(c, c, 3, padding=4, dilation=4),
            nn.SiLU(),
            nn.Conv2d(c, cfg.feat_dim, 1),
        )
        # informed initialisation: sharp matches, a weak small-motion prior, local support
        self.log_match_sharpness = nn.Parameter(torch.tensor(math.log(300.0)))
        self.log_motion_prior = nn.Parameter(torch.tensor(math.log(0.01)))
        self.log_length = nn.Parameter(torch.tensor(math.log(cfg.image_size / 4)))
        self.affinity = nn.Parameter(torch.tensor(4.0))
        self.log_support_sharpness = nn.Parameter(torch.tensor(math.log(300.0)))
        self.log_support_length = nn.Parameter(torch.tensor(math.log(cfg.image_size / 4)))
        self.support_affinity = nn.Parameter(torch.tensor(4.0))
        self.support = nn.Parameter(torch.tensor(1.0))
        self.confidence = nn.Parameter(torch.tensor(30.0))
        self.null_logit = nn.Parameter(torch.tensor(-1.0))
        self.new_logit = nn.Parameter(torch.tensor(-4.0))
        self.log_beta = nn.Parameter(torch.tensor(math.log(20.0)))
        self.code_bias = nn.Parameter(torch.zeros(cfg.codebook_size))
        if cfg.camera:
            self.camera_logit = nn.Parameter(torch.tensor(1.0))
            self.log_camera_scale = nn.Parameter(torch.tensor(0.0))  # robust residual, px
            self.distinct = nn.Parameter(torch.tensor(1.0))  # weight of log distinctness
            self.log_contrast_floor = nn.Parameter(torch.tensor(math.log(1e-3)))
            self.log_camera_ridge = nn.Parameter(torch.tensor(math.log(1e-2)))
        r = torch.arange(-cfg.max_disp, cfg.max_disp + 1, dtype=torch.float32)
        dy, dx = torch.meshgrid(r, r, indexing="ij")
        self.register_buffer("disps", torch.stack([dx, dy], -1).reshape(-1, 2), persistent=False)
        q = torch.arange(-3, 4, dtype=torch.float32) / 4  # quarter pixels, up to 3/4
        fy, fx = torch.meshgrid(q, q, indexing="ij")
        self.register_buffer(
            "fine_offsets", torch.stack([fx, fy], -1).reshape(-1, 2), persistent=False
        )

    # --- the frame-pair protocol --------------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def patch(self) -> int:
        return self.config.patch

    @property
    def codebook(self) -> torch.Tensor:
        return self.quantizer.codebook

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def slot_centres(self, device: torch.device) -> torch.Tensor:
        """(n_slots, 2) xy pixel coordinates of the slot centres (pixel [i, j] spans
        [j, j + 1) x [i, i + 1))."""
        g, p = self.config.grid, self.config.patch
        idx = torch.arange(g * g, device=device)
        return torch.stack([(idx % g).float(), (idx // g).float()], -1) * p + p / 2

    # --- pieces ---------------------------------------------------------------------------
    def match(
        self, image0: torch.Tensor, revealed: torch.Tensor, slots: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Displacements (B, R, 2) xy, match costs (B, R; over the patch's contrast with
        ``camera``) and distinctness (B, R: the largest probability of the softmax over
        whole-pixel displacements; low where a plain patch matches many windows alike)
        of revealed frame-1 patches ``revealed`` (B, R, p*p*3) at ``slots`` (B, R)
        against frame 0 ``image0`` (B, 3, H, W) in [0, 1]."""
        cfg = self.config
        b, _, h, w = image0.shape
        p, d = cfg.patch, cfg.max_disp
        pad = F.pad(image0, (d, d, d, d))
        inside = F.pad(torch.ones_like(image0[:, :1]), (d, d, d, d))
        side = w + 2 * d - p + 1
        win = F.unfold(pad, p)  # (B, 3*p*p, side*side): every p x p window
        win = win.view(b, 3, p * p, -1).transpose(1, 2).reshape(b, p * p * 3, -1)
        frac = F.unfold(inside, p).mean(1)  # (B, side*side) fraction inside the frame
        g = cfg.grid
        y0, x0 = (slots // g) * p, (slots % g) * p  # (B, R) top-left of each revealed slot
        dxy = self.disps.long()  # (D, 2)
        iy = y0[..., None] - dxy[:, 1] + d  # source window = slot - displacement
        ix = x0[..., None] - dxy[:, 0] + d
        idx = (iy * side + ix).reshape(b, -1)  # (B, R*D)
        # ||window - patch||^2 = ||window||^2 - 2 window.patch + ||patch||^2, the dot
        # products of every patch with every window as one batched product
        dots = revealed @ win  # (B, R, side*side)
        n_win = win.pow(2).sum(1)  # (B, side*side)
        r = revealed.shape[1]
        pick = idx.view(b, r, -1)
        sq = n_win.gather(1, idx).view_as(pick) - 2 * dots.gather(2, pick)
        cost = (sq + revealed.pow(2).sum(-1, keepdim=True)).clamp(min=0) / win.shape[1]
        cost = cost + (1 - frac.gather(1, idx).view_as(cost))  # windows leaving the frame
        contrast = torch.ones_like(cost[..., :1])
        if cfg.camera:  # costs relative to the patch's own contrast: plain texture matches too
            contrast = revealed.var(-1, keepdim=True) + self.log_contrast_floor.exp()
        logits = -self.log_match_sharpness.exp() * cost / contrast
        logits = logits - self.log_motion_prior.exp() * self.disps.pow(2).sum(-1)
        best = logits.argmax(-1)  # (B, R)
        coarse = self.disps[best]  # (B, R, 2) whole pixels
        # sub-pixel refinement: frame 0 resampled (bilinear) at quarter-pixel offsets
        fine = self.fine_offsets  # (O, 2)
        centres = self.slot_centres(image0.device)[slots]  # (B, R, 2)
        src = centres[:, :, None] - coarse[:, :, None] - fine  # (B, R, O, 2)
        cand = self.sample_patches(image0, src.reshape(b, -1, 2)).view(*src.shape[:3], -1)
        fine_cost = (cand - revealed[:, :, None]).pow(2).mean(-1)  # (B, R, O)
        k = fine_cost.argmin(-1)
        disp = coarse + fine[k]
        peak = logits.softmax(-1).amax(-1)
        return disp, fine_cost.gather(-1, k[..., None])[..., 0] / contrast[..., 0], peak

    def sample_patches(self, image0: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """Patches (B, N, p*p*3) of ``image0`` (B, 3, H, W) centred at ``centres`` (B, N, 2)
        xy pixels, bilinear (zeros outside the frame)."""
        b, _, h, w = image0.shape
        p = self.config.patch
        o = torch.arange(p, device=image0.device, dtype=torch.float32) - (p - 1) / 2
        oy, ox = torch.meshgrid(o, o, indexing="ij")
        pts = centres[:, :, None, :] + torch.stack([ox, oy], -1).reshape(1, 1, -1, 2)
        grid = torch.stack([pts[..., 0] / w * 2 - 1, pts[..., 1] / h * 2 - 1], -1)
        s = F.grid_sample(image0, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return s.permute(0, 2, 3, 1).reshape(b, centres.shape[1], p * p * 3)  # (y, x, c) order

    def _sample_features(self, feats: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
        b, _, h, w = feats.shape
        grid = torch.stack([pts[..., 0] / w * 2 - 1, pts[..., 1] / h * 2 - 1], -1)
        flat = grid.reshape(b, -1, 1, 2)
        s = F.grid_sample(feats, flat, mode="bilinear", padding_mode="border", align_corners=False)
        return s[..., 0].transpose(1, 2).reshape(*pts.shape[:-1], -1)

    def code_logits(self, patches: torch.Tensor) -> torch.Tensor:
        """Unnormalised log-probabilities (..., K) of codes for predicted patches
        (..., p*p*3): ``-beta ||patch - codeword||^2 + b_k`` up to a per-patch constant
        (one fused matrix product)."""
        cb = self.quantizer.codebook
        beta = self.log_beta.exp()
        bias = self.code_bias - beta * (cb**2).sum(-1)
        flat = patches.reshape(-1, patches.shape[-1])
        return torch.addmm(bias, flat, (2 * beta) * cb.T).view(*patches.shape[:-1], -1)

    def code_logprobs(self, patches: torch.Tensor) -> torch.Tensor:
        """log-probabilities (..., K) of codes for predicted patches (..., p*p*3)."""
        return self.code_logits(patches).log_softmax(-1)

    # --- the model --------------------------------------------------------------------------
    def affine_basis(self, xy: torch.Tensor) -> torch.Tensor:
        """``[x, y, 1]`` (..., 3) of pixel points ``xy`` (..., 2), in units of the image side
        about its centre: an affine motion (3, 2) maps it to displacements."""
        return torch.cat([xy / self.config.image_size - 0.5, torch.ones_like(xy[..., :1])], -1)

    def fit_camera(
        self, xy: torch.Tensor, disp: torch.Tensor, weight: torch.Tensor, iters: int = 3
    ) -> torch.Tensor:
        """Affine motion (B, 3, 2) fitted to displacements ``disp`` (B, R, 2) at points
        ``xy`` (B, R, 2): weighted least squares on ``[x, y, 1]`` (coordinates in units
        of the image side; a ridge in proportion to the total weight pulls rotation,
        scaling and shear towards a pure translation, so that a few distinct matches
        cannot tilt the fit), reweighted ``iters`` times by a Geman-McClure loss on the
        residuals so that a minority of outlying matches (another moving layer, a wrong
        match) does not pull it."""
        x = self.affine_basis(xy)
        r = self.log_camera_ridge.exp()
        ridge = torch.diag(torch.stack([r, r, r.new_tensor(1e-4)]))  # the translation is free
        scale2 = self.log_camera_scale.exp() ** 2
        w = weight
        for i in range(iters + 1):
            xw = x * w[..., None]
            lam = w.sum(1).clamp(min=1e-6)[:, None, None] * ridge
            coef = torch.linalg.solve(xw.transpose(1, 2) @ x + lam, xw.transpose(1, 2) @ disp)
            if i < iters:
                w = weight / (1 + (x @ coef - disp).pow(2).sum(-1) / scale2) ** 2
        return coef

    def hypotheses(
        self, image0: torch.Tensor, frame1: torch.Tensor, revealed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The motion hypotheses and their weights: displacements (B, S, H, 2) xy of every
        hypothesis at every slot — the null hypothesis first, then one per revealed slot,
        then (``camera``) the camera hypothesis — and weight logits (B, S, H).
        ``image0`` (B, 3, H, W) in [0, 1]."""
        cfg = self.config
        b = image0.shape[0]
        n_rev = revealed.sum(1)
        if b and not (n_rev == n_rev[0]).all():
            raise ValueError("every row must reveal the same number of slots")
        r = int(n_rev[0]) if b else 0
        centres = self.slot_centres(image0.device)  # (S, 2)
        s = centres.shape[0]
        null = torch.zeros(b, s, 1, 2, device=image0.device)  # the null hypothesis first
        w = self.null_logit.expand(b, s, 1)
        if not cfg.reveal_conditioning or r == 0:
            return null, w
        rev_slots = revealed.float().argsort(dim=1, descending=True, stable=True)[:, :r]
        f1 = self.quantizer.patchify(frame1)
        rev = f1.gather(1, rev_slots[..., None].expand(-1, -1, f1.shape[-1]))
        d_r, cost, peak = self.match(image0, rev, rev_slots)  # (B, R, 2), (B, R), (B, R)
        c_r = centres[rev_slots]  # (B, R, 2)
        # every hypothesis's displacement at every slot (S) and at every revealed patch (R)
        at_s = torch.cat([null, d_r[:, None].expand(-1, s, -1, -1)], 2)  # (B, S, H, 2)
        at_r = torch.cat([null[:, :1].expand(-1, r, -1, -1), d_r[:, None].expand(-1, r, -1, -1)], 2)
        if cfg.camera:
            coef = self.fit_camera(c_r, d_r, peak * torch.exp(-self.confidence * cost))
            at_s = torch.cat([at_s, (self.affine_basis(centres) @ coef)[:, :, None]], 2)
            at_r = torch.cat([at_r, (self.affine_basis(c_r) @ coef)[:, :, None]], 2)
        dist2 = (centres[None, :, None] - c_r[:, None]).pow(2).sum(-1)  # (B, S, R)
        feats = F.normalize(self.features(image0), dim=1)
        src_r = self._sample_features(feats, c_r - d_r)  # (B, R, F)
        src_s = self._sample_features(feats, centres[None, :, None] - d_r[:, None])
        aff = (src_s * src_r[:, None]).sum(-1)  # (B, S, R): same surface at the sources
        # support: which hypotheses explain each revealed patch (a vote per patch), and
        # which revealed patches speak for each slot (near it, on its surface)
        h = at_r.shape[2]
        src = c_r[:, :, None] - at_r  # (B, R, H, 2)
        cand = self.sample_patches(image0, src.reshape(b, -1, 2)).view(b, r, h, -1)
        cross = (cand - rev[:, :, None]).pow(2).mean(-1)  # (B, R, H)
        votes = (-self.log_support_sharpness.exp() * cross).softmax(-1)
        near = -dist2 / (2 * self.log_support_length.exp() ** 2) + self.support_affinity * aff
        support = near.softmax(-1) @ votes  # (B, S, H)
        own = (
            -dist2 / (2 * self.log_length.exp() ** 2)
            + self.affinity * aff
            - self.confidence * cost[:, None]
        )
        logits = [w, own]
        if cfg.camera:  # a plain patch that matches many windows alike proposes little
            logits[1] = own + self.distinct * peak.clamp(min=1e-4).log()[:, None]
            logits.append(self.camera_logit.expand(b, s, 1))
        return at_s, torch.cat(logits, -1) + self.support * support.clamp(min=1e-4).log()

    def motion(
        self, frame0: torch.Tensor, frame1: torch.Tensor, revealed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What the model infers about the motion from ``frame0`` and the ``revealed``
        patches of ``frame1`` (frames (B, H, W, 3) in [0, 255]): the hypotheses'
        displacements (B, S, H, 2) and weight logits (B, S, H) of :meth:`hypotheses`.
        :meth:`frame1_logprobs` takes it back as ``motion=``."""
        return self.hypotheses(frame0.float().permute(0, 3, 1, 2) / 255.0, frame1, revealed)

    def frame1_logprobs(
        self,
        frame0: torch.Tensor,
        frame1: torch.Tensor,
        revealed: torch.Tensor,
        motion: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """log-probabilities (B, n_slots, K) of the code of every frame-1 patch, given all
        of ``frame0`` and the patches of ``frame1`` at the ``revealed`` (B, n_slots) bool
        slots; frames are (B, H, W, 3) in [0, 255]. Every row must reveal the same number
        of slots (rows of revealed slots are predicted too, from the others).
        Log-probabilities are floored at log(1e-30).

        ``motion``: the output of :meth:`motion` for another frame 0 (e.g. the clean one
        of a perturbed ``frame0``), used instead of inferring the motion from ``frame0``:
        the patches are still copied from ``frame0``, so a change of ``frame0`` is carried
        along by that motion without changing it."""
        image0 = frame0.float().permute(0, 3, 1, 2) / 255.0
        if motion is None:
            disp, w = self.hypotheses(image0, frame1, revealed)
        else:
            disp, w = motion
            if disp.shape[0] != image0.shape[0] or w.shape[:2] != (
                image0.shape[0],
                self.config.n_slots,
            ):
                raise ValueError(
                    f"motion is for {disp.shape[0]} rows of {w.shape[1]} slots, frame0 has "
                    f"{image0.shape[0]} rows of {self.config.n_slots}"
                )
        b, s, m = w.shape
        centres = self.slot_centres(frame0.device)
        src = centres[None, :, None] - disp  # (B, S, H, 2) source centres in frame 0
        patches = self.sample_patches(image0, src.reshape(b, s * m, 2)).view(b, s, m, -1)
        head = self.config.head
        if head == "mixture":
            weights = torch.cat([w, self.new_logit.expand(b, s, 1)], -1).softmax(-1)
            logits = self.code_logits(patches)  # (B, S, H, K)
            # p(k) = sum_h w_h exp(l_hk) / z_h, with each component scaled by its largest
            # term (so every exp is <= 1; terms below e^-80 are cut to it, since exp's slow
            # path on denormals costs 10x) and the sum over h as one batched product
            q = (logits - logits.amax(-1, keepdim=True)).clamp_(min=-80.0).exp_()
            c = weights[..., :m] / q.sum(-1)  # (B, S, H): weight / component normaliser
            p = (c.reshape(-1, 1, m) @ q.reshape(-1, m, q.shape[-1])).view(b, s, -1)
            new = self.code_bias.softmax(-1)  # unconditional code frequencies
            return (p + weights[..., m:] * new).clamp(min=1e-30).log()
        if head == "mode":
            top = w.argmax(-1)  # (B, S)
            best = patches.gather(2, top[..., None, None].expand(-1, -1, 1, patches.shape[-1]))
            return self.code_logprobs(best[:, :, 0])
        mean = (w.softmax(-1)[..., None] * patches).sum(2)  # the regression head
        return self.code_logprobs(mean)

    def forward(
        self, frame0: torch.Tensor, frame1: torch.Tensor, revealed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass: log-probabilities (B, n_slots, K) and the mean negative
        log-likelihood of the codes of the hidden (not revealed) frame-1 patches."""
        logp = self.frame1_logprobs(frame0, frame1, revealed)
        target = self.quantizer.encode(frame1)
        nll = -logp.gather(-1, target[..., None])[..., 0]
        hidden = ~revealed
        return logp, (nll * hidden).sum() / hidden.sum().clamp(min=1)
