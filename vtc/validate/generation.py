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


def _eq(a: list[int], b: list[int]) -> str:
    return "=" if a == b else "≠"


def validate(fam: Family, model: Any, geo: Any, cuts: Cuts, bundle: VlmBundle, prompts: list[str],
             images: list[Image.Image], max_new: int, log: Log,
             reference: VlmBundle | None = None, no_twin: str = ""
             ) -> tuple[GenerationParity, GenerationFidelity, DeploymentParity | None]:
    """Parity (fp32 engines vs eager with the cuts), fidelity (the bundle vs HF's uncut
    model) and, for a bundle whose decoder is not fp32, its deployment tier against
    `reference` (its fp32 twin with the same cuts; parity is judged on that twin) or,
    where `no_twin` gives the reason none was built, against the eager model with the
    cuts (parity then covers the vision graph only).

    In three phases, each releasing what it loaded before the next: the bundle's runtime
    on every prompt, the fp32 twin's, then the eager model's — so a large model's
    engine and its eager reference are never in memory together."""
    eos = bundle.eos
    inputs = []
    for i, (prompt, img) in enumerate(zip(prompts, images, strict=True)):
        try:
            ids = bundle.prompt_ids(prompt, max_new_tokens=max_new)
        except BundleError as exc:
            raise InputError(f"generate.prompts[{i}]: {exc}") from None
        inputs.append((ids, bundle.pixels(img, fit=True)))
    engine = [bundle.generate(ids, px, max_new) for ids, px in inputs]
    vision = [(reference or bundle).session("vision").run(None, {"pixel_values": px})[0]
              for _ids, px in inputs]
    bundle.release()
    twin = engine if reference is None else [reference.generate(ids, px, max_new)
                                             for ids, px in inputs]
    if reference is not None:
        reference.release()
    n = len(prompts)
    equal = exact = top1 = dep_equal = 0
    logit_diff = vision_diff = dep_diff = 0.0
    cosines: list[float] = []
    dep_cos: list[float] = []
    deploy = reference is not None or bool(no_twin)
    for i, ((ids, px), eng, fp32, vis) in enumerate(zip(inputs, engine, twin, vision,
                                                        strict=True)):
        pt = torch.from_numpy(px)
        ie = fam.image_embeds(model, geo, cuts, pt)
        ref = fam.generate(model, geo, cuts, ids, pt, max_new, eos)
        full = fam.hf_generate(model, geo, ids, pt, max_new, eos)
        ref_tokens, ref_logits = ref.tokens, ref.first_logits.numpy()
        # what the deployment tier compares with: the fp32 twin, or the eager model
        base_tokens, base_logits = ((ref_tokens, ref_logits) if no_twin else
                                    (fp32.tokens, fp32.first_logits))
        vision_diff = max(vision_diff, float(np.abs(vis.reshape(-1) -
                                                    ie.numpy().reshape(-1)).max()))
        logit_diff = max(logit_diff, float(np.abs(fp32.first_logits - ref_logits).max()))
        equal += fp32.tokens == ref_tokens
        exact += eng.tokens == full.tokens
        top1 += eng.tokens[:1] == full.tokens[:1]
        cosines.append(_cos(eng.first_logits, full.first_logits.numpy()))
        if deploy:
            dep_equal += eng.tokens == base_tokens
            dep_cos.append(_cos(eng.first_logits, base_logits))
            dep_diff = max(dep_diff, float(np.abs(eng.first_logits - base_logits).max()))
        parts = [f"{len(eng.tokens)} tokens"]
        if not no_twin:
            parts.append(f"{_eq(fp32.tokens, ref_tokens)} eager with cuts"
                         + (" (fp32 twin)" if reference is not None else ""))
        if deploy:
            parts.append(f"{_eq(eng.tokens, base_tokens)} "
                         + ("eager with cuts" if no_twin else "fp32 twin"))
        parts.append(f"{_eq(eng.tokens, full.tokens)} uncut")
        log(f"  prompt {i + 1}/{n}: {', '.join(parts)}")
    how = "streamed" if getattr(model, "_vtc_streamed", False) else "resident"
    parity = (GenerationParity(n, max_new, None, None, vision_diff, how,
                               f"no fp32 decoder ran: {no_twin}") if no_twin else
              GenerationParity(n, max_new, equal / n, logit_diff, vision_diff, how))
    fid = GenerationFidelity(n, statistics.fmean(cosines), min(cosines), top1 / n, exact / n,
                             random_weights=getattr(model, "_vtc_random", False))
    dep = None if not deploy else DeploymentParity(
        bundle.precision, n, dep_equal / n, min(dep_cos), dep_diff,
        "eager reference" if no_twin else "fp32 twin")
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
