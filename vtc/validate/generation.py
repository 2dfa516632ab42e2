"""Generation parity, fidelity and cost of a vision-language bundle: the validation and
timing stages of `stages.vlm`.

    bundle (onnxruntime-genai) ─┐
    eager HF + the cuts ────────┼─► parity (tokens equal, first logits, vision graph)
    HF's own uncut generate ────┘   fidelity (first logits cosine, first token, exact)
    uncut bundle ─┬─ interleaved rounds ─► cost (vision ms, decoder prefill ms, decode tok/s)
    cut bundle ───┘
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
from PIL import Image

from vtc.errors import InputError
from vtc.report_vlm import DeploymentParity, GenerationFidelity, GenerationParity, VlmCost
from vtc.runtime import BundleError
from vtc.runtime.generate import VlmBundle
from vtc.vlm.families import Family
from vtc.vlm.plan import Cuts

Log = Callable[[str], None]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def validate(fam: Family, model: Any, geo: Any, cuts: Cuts, bundle: VlmBundle, prompts: list[str],
             images: list[Image.Image], max_new: int, log: Log,
             reference: VlmBundle | None = None
             ) -> tuple[GenerationParity, GenerationFidelity, DeploymentParity | None]:
    """Parity (fp32 engines vs eager with the cuts), fidelity (the bundle vs HF's uncut
    model) and, for a bundle whose decoder is not fp32, its deployment tier against
    `reference` (its fp32 twin with the same cuts; parity is judged on that twin)."""
    eos = bundle.eos
    equal = exact = top1 = dep_equal = 0
    logit_diff = vision_diff = dep_diff = 0.0
    cosines: list[float] = []
    dep_cos: list[float] = []
    for i, (prompt, img) in enumerate(zip(prompts, images, strict=True)):
        try:
            ids = bundle.prompt_ids(prompt, max_new_tokens=max_new)
        except BundleError as exc:
            raise InputError(f"generate.prompts[{i}]: {exc}") from None
        px = bundle.pixels(img, fit=True)
        eng = bundle.generate(ids, px, max_new)
        fp32 = eng if reference is None else reference.generate(ids, px, max_new)
        vis = (reference or bundle).session("vision").run(None, {"pixel_values": px})[0]
        pt = torch.from_numpy(px)
        ie = fam.image_embeds(model, geo, cuts, pt)
        ref = fam.generate(model, geo, cuts, ids, pt, max_new, eos)
        full = fam.hf_generate(model, geo, ids, pt, max_new, eos)
        vision_diff = max(vision_diff, float(np.abs(vis.reshape(-1) -
                                                    ie.numpy().reshape(-1)).max()))
        diff = np.abs(fp32.first_logits - ref.first_logits.numpy()).max()
        logit_diff = max(logit_diff, float(diff))
        equal += fp32.tokens == ref.tokens
        exact += eng.tokens == full.tokens
        top1 += eng.tokens[:1] == full.tokens[:1]
        cosines.append(_cos(eng.first_logits, full.first_logits.numpy()))
        if reference is not None:
            dep_equal += eng.tokens == fp32.tokens
            dep_cos.append(_cos(eng.first_logits, fp32.first_logits))
            dep_diff = max(dep_diff, float(np.abs(eng.first_logits - fp32.first_logits).max()))
        log(f"  prompt {i + 1}/{len(prompts)}: {len(eng.tokens)} tokens, "
            f"{'=' if fp32.tokens == ref.tokens else '≠'} eager with cuts"
            + ("" if reference is None else
               f" (fp32 twin), {'=' if eng.tokens == fp32.tokens else '≠'} fp32 twin")
            + f", {'=' if eng.tokens == full.tokens else '≠'} uncut")
    n = len(prompts)
    parity = GenerationParity(n, max_new, equal / n, logit_diff, vision_diff)
    fid = GenerationFidelity(n, statistics.fmean(cosines), min(cosines), top1 / n, exact / n,
                             random_weights=getattr(model, "_vtc_random", False))
    dep = None if reference is None else DeploymentParity(
        bundle.precision, n, dep_equal / n, min(dep_cos), dep_diff)
    return parity, fid, dep


def _ms(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def cost(base: VlmBundle, cut: VlmBundle, prompt: str, image: Image.Image, rounds: int,
         steps: int) -> VlmCost:
    """Vision latency, decoder prefill latency (onnxruntime sessions on the bundles'
    graphs) and decode rate (each bundle's runtime), uncut and cut, interleaved round by
    round within each of the three phases; a phase's graphs are released before the
    next loads (the vision graphs, then the decoders, then the runtimes), so at most two
    bundles' worth of one phase is held at once."""
    sides = []
    for b in (base, cut):
        ids = b.prompt_ids(prompt, max_new_tokens=steps)
        sides.append((b, ids, b.pixels(image, fit=True)))

    def interleaved(run: Callable[[int], float]) -> list[list[float]]:
        got: list[list[float]] = [[], []]
        for _ in range(rounds + 1):  # the first round warms up and is dropped
            for k in (0, 1):
                got[k].append(run(k))
        for b, _ids, _px in sides:
            b.release()
        return [g[1:] for g in got]

    vis = interleaved(lambda k: _ms(partial(sides[k][0].session("vision").run, None,
                                            {"pixel_values": sides[k][2]})))
    feeds = [b.prefill_feeds(ids, px) for b, ids, px in sides]
    for b, _ids, _px in sides:
        b.release()
    pre = interleaved(lambda k: _ms(partial(sides[k][0].session("decoder").run, None,
                                            feeds[k])))
    dec = interleaved(lambda k: sides[k][0].generate(sides[k][1], sides[k][2], steps,
                                                     stop_at_eos=False).tokens_per_s)
    med = [statistics.median(v) for v in vis]
    pmed = [statistics.median(v) for v in pre]
    dmed = [statistics.median(v) for v in dec]
    return VlmCost(rounds, round(med[0], 3), round(med[1], 3), round(pmed[0], 3),
                   round(pmed[1], 3), round(pmed[1] / pmed[0], 4), steps,
                   round(dmed[0], 2), round(dmed[1], 2),
                   [round(x, 3) for x in pre[0]], [round(x, 3) for x in pre[1]],
                   [round(x, 3) for x in dec[0]], [round(x, 3) for x in dec[1]])
