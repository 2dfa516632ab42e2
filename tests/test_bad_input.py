"""Bad input, table-driven, across every command: each case exits 2 with exactly one
`error:` line that names the problem, no traceback, and nothing written or changed
anywhere under the test's directory (the sources, --out and its neighbours, the zoo
cache and the crash-log folder all live there)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from tests.conftest import FAST
from tests.tiny import build_variant
from vtc.cli import export_main, main

# A case gets (tmp, fixtures) and returns (command, argv, expected regex of the error line)
Fixtures = dict[str, Path]
Build = Callable[[Path, Fixtures], tuple[str, list[str], str]]


@dataclass(frozen=True)
class Case:
    build: Build


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def _export(*argv: str, expected: str, tome: bool = True) -> Case:
    """vtc-export SOURCE-from-fixture … (argv may name fixtures as {name})."""
    def build(tmp: Path, fx: Fixtures) -> tuple[str, list[str], str]:
        args = [a.format(**{k: str(v) for k, v in fx.items()}, tmp=tmp) for a in argv]
        extra = ["--set", "tome.r=2"] if tome else []
        if "--out" not in args:
            args += ["--out", str(tmp / "out")]
        return "export", [*args[:1], *FAST, *extra, *args[1:]], expected
    return Case(build)


def _vtc(*argv: str, expected: str) -> Case:
    def build(tmp: Path, fx: Fixtures) -> tuple[str, list[str], str]:
        args = [a.format(**{k: str(v) for k, v in fx.items()}, tmp=tmp) for a in argv]
        return "main", args, expected
    return Case(build)


def _recipe(setting: str, expected: str) -> Case:
    """`--set setting` (several when `setting` joins them with ` --set `)."""
    sets = [a for part in setting.split(" --set ") for a in ("--set", part)]
    return _export("{vit}", *sets, expected=expected)


def _made(make: Callable[[Path, Fixtures], list[str]], expected: str) -> Case:
    """A case whose inputs are made on the fly; `make` returns the vtc-export argv."""
    def build(tmp: Path, fx: Fixtures) -> tuple[str, list[str], str]:
        args = make(tmp, fx)
        if "--out" not in args:
            args += ["--out", str(tmp / "out")]
        return "export", [*args[:1], *FAST, "--set", "tome.r=2", *args[1:]], expected
    return Case(build)


# ---- inputs made on the fly ------------------------------------------------------------

def _file(name: str, data: bytes) -> Callable[[Path, Fixtures], list[str]]:
    def make(tmp: Path, _fx: Fixtures) -> list[str]:
        (tmp / name).write_bytes(data)
        return [str(tmp / name)]
    return make


def _dir(name: str) -> Callable[[Path, Fixtures], list[str]]:
    def make(tmp: Path, _fx: Fixtures) -> list[str]:
        (tmp / name).mkdir()
        return [str(tmp / name)]
    return make


def _ckpt(edit: Callable[[Path], None]) -> Callable[[Path, Fixtures], list[str]]:
    """A copy of the tiny checkpoint, edited."""
    def make(tmp: Path, fx: Fixtures) -> list[str]:
        d = tmp / "ckpt"
        d.mkdir()
        for f in fx["vit"].iterdir():
            (d / f.name).write_bytes(f.read_bytes())
        edit(d)
        return [str(d)]
    return make


def _onnx_edit(edit: Callable[[Path, Path], None]) -> Callable[[Path, Fixtures], list[str]]:
    def make(tmp: Path, fx: Fixtures) -> list[str]:
        path = tmp / "m.onnx"
        edit(fx["vit_onnx"], path)
        return [str(path)]
    return make


def _truncate(src: Path, dst: Path) -> None:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 3])


def _external_missing(src: Path, dst: Path) -> None:
    onnx.save(onnx.load(str(src)), str(dst), save_as_external_data=True,
              all_tensors_to_one_file=True, location="m.onnx.data", size_threshold=0)
    (dst.parent / "m.onnx.data").unlink()


def _already_compressed(src: Path, dst: Path) -> None:
    import onnx_ir as ir

    from tests.budgets import tome_budget
    from vtc.budget import Geometry
    from vtc.passes import load
    from vtc.stages.compress import rewrite

    m = load(src)
    rewrite(m, tome_budget(Geometry(17, 1, 64, 128, 3), r=2))
    ir.save(m, dst)


def _no_attention(_src: Path, dst: Path) -> None:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 32, 32])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(dst))


def _two_image_inputs(src: Path, dst: Path) -> None:
    """The tiny ViT with a second (unused) image-like input."""
    from onnx import TensorProto, helper

    m = onnx.load(str(src))
    m.graph.input.append(helper.make_tensor_value_info("aux", TensorProto.FLOAT,
                                                       [2, 3, 32, 32]))
    onnx.save(m, str(dst))


def _laughs() -> bytes:
    """A YAML document whose aliases expand to 9**7 strings (a "billion laughs")."""
    rows = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    rows += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 7)]
    return ("\n".join(rows) + "\nname: x\nmethod: tome\nvalidate:\n  captions: "
            f"[{', '.join(['*a6'] * 9)}]\n").encode()


def _opset(version: int, ir_version: int | None = None) -> Callable[[Path, Path], None]:
    def edit(src: Path, dst: Path) -> None:
        m = onnx.load(str(src))
        for o in m.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = version
        m.ir_version = ir_version or m.ir_version
        onnx.save(m, str(dst))
    return edit


def _int64_input(src: Path, dst: Path) -> None:
    m = onnx.load(str(src))
    m.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.INT64
    onnx.save(m, str(dst))


def _wrong_shape(d: Path) -> None:
    sd = load_file(str(d / "model.safetensors"))
    key = sorted(k for k in sd if k.endswith("weight") and sd[k].ndim == 2)[1]
    sd[key] = torch.zeros(3, 3)
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})


def _pickle_only(garbage: bool) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        (d / "model.safetensors").unlink()
        (d / "pytorch_model.bin").write_bytes(b"not a pickle" if garbage else b"\x80\x04N.")
    return edit


def _pickle_bytes(make: Callable[[], bytes]) -> Callable[[Path], None]:
    """pytorch_model.bin (made by `make`) in place of the safetensors weights."""
    def edit(d: Path) -> None:
        (d / "model.safetensors").unlink()
        (d / "pytorch_model.bin").write_bytes(make())
    return edit


def _truncated_torch_save() -> bytes:
    import io

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buf)
    return buf.getvalue()[: len(buf.getvalue()) // 2]


def _global_pickle() -> bytes:
    import pickle

    return pickle.dumps(os.system, protocol=2)  # a reference to os.system, never called


def _weights(change: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        sd = load_file(str(d / "model.safetensors"))
        save_file({k: change(v) for k, v in sd.items()}, str(d / "model.safetensors"),
                  metadata={"format": "pt"})
    return edit


def _bomb_png() -> bytes:
    """A 14000×14000 1-bit PNG (24 kB): past Pillow's decompression-bomb limit."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (14000, 14000)).save(buf, "PNG")
    return buf.getvalue()


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda d: (d / name).write_bytes(data)


def _set_config(**changes: object) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(changes)
        (d / "config.json").write_text(json.dumps(cfg))
    return edit


def _without(name: str) -> Callable[[Path], None]:
    return lambda d: (d / name).unlink()


def _out_symlink(tmp: Path, fx: Fixtures) -> list[str]:
    (tmp / "dangling").symlink_to(tmp / "nowhere")
    return [str(fx["vit"]), "--out", str(tmp / "dangling")]


def _out_file(tmp: Path, fx: Fixtures) -> list[str]:
    (tmp / "afile").write_text("x")
    return [str(fx["vit"]), "--out", str(tmp / "afile")]


def _out_not_empty(tmp: Path, fx: Fixtures) -> list[str]:
    (tmp / "full").mkdir()
    (tmp / "full" / "keep.txt").write_text("mine")
    return [str(fx["vit"]), "--out", str(tmp / "full")]


def _recipe_file(text: bytes) -> Callable[[Path, Fixtures], list[str]]:
    def make(tmp: Path, fx: Fixtures) -> list[str]:
        (tmp / "r.yaml").write_bytes(text)
        return [str(fx["vit"]), "--recipe", str(tmp / "r.yaml")]
    return make


def _images(files: dict[str, bytes]) -> Callable[[Path, Fixtures], list[str]]:
    def make(tmp: Path, fx: Fixtures) -> list[str]:
        folder = tmp / "imgs"
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        return [str(fx["vit"]), "--images", str(folder)]
    return make


def _clip_ckpt(edit: Callable[[Path], None]) -> Callable[[Path, Fixtures], list[str]]:
    """A copy of the tiny full CLIP checkpoint (with its tokenizer), edited."""
    def make(tmp: Path, fx: Fixtures) -> list[str]:
        d = tmp / "clip_edited"
        shutil.copytree(fx["clip"], d)
        edit(d)
        return [str(d)]
    return make


def _without_tokenizer(d: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (d / name).unlink()


def _captions_file(data: bytes, source: str = "clip") -> Callable[[Path, Fixtures], list[str]]:
    def make(tmp: Path, fx: Fixtures) -> list[str]:
        (tmp / "captions.txt").write_bytes(data)
        return [str(fx[source]), "--captions", str(tmp / "captions.txt")]
    return make


CLIP_CASES: dict[str, Case] = {
    "full CLIP without a tokenizer": _made(_clip_ckpt(_without_tokenizer),
                                           "has no tokenizer files"),
    "full CLIP with a broken tokenizer": _made(
        _clip_ckpt(_write("tokenizer.json", b"{not json")), "cannot load the tokenizer"),
    "captions empty": _export("{clip}", "--set", "validate.captions=[]",
                              expected=r"validate\.captions: .*0 caption\(s\)"),
    "one caption": _export("{clip}", "--set", "validate.captions=[a cat]",
                           expected=r"1 caption\(s\); .* needs at least 2"),
    "a blank caption": _export("{clip}", "--set", "validate.captions=[a cat, '  ']",
                               expected="caption 2 is blank"),
    "a caption twice": _export("{clip}", "--set", "validate.captions=[a cat, a cat]",
                               expected="'a cat' is given twice"),
    "captions not a list": _export("{clip}", "--set", "validate.captions=7",
                                   expected=r"validate\.captions"),
    "--captions file empty": _made(_captions_file(b"# only a comment\n\n"),
                                   r"--captions .*0 caption\(s\)"),
    "--captions file not UTF-8": _made(_captions_file(b"a cat\n\xff\xfe dog\n"),
                                       "not UTF-8 text"),
    "--captions a folder": _export("{clip}", "--captions", "{tmp}",
                                   expected=r"--captions .*cannot be read"),
    "--captions missing": _export("{clip}", "--captions", "{tmp}/no.txt",
                                  expected=r"--captions .*cannot be read"),
    "--captions a pipe": _made(lambda t, f: (os.mkfifo(t / "c.txt"), [
        str(f["clip"]), "--captions", str(t / "c.txt")])[1], r"--captions .*c\.txt: not a "
        r"regular file \(a device, pipe or socket\)"),
    "--captions for a vision model": _made(_captions_file(b"a cat\na dog\n", "vit"),
                                           r"--captions: .* vit vision model without a text"),
    "validate.captions for a vision model": _recipe(
        "validate.captions=[a cat, a dog]", r"validate\.captions: .*image–text checkpoints"),
    "text_length for an ONNX source": _export("{vit_onnx}", "--set", "export.text_length=8",
                                              expected="an ONNX source has no text tower"),
    "text_length beyond the positions": _export(
        "{clip}", "--set", "export.text_length=99",
        expected=r"export\.text_length=99 exceeds the text tower's 12 positions"),
    "text_length 1": _export("{clip}", "--set", "export.text_length=1",
                             expected=r"export\.text_length"),
}

SOURCE_CASES: dict[str, Case] = {
    "empty SOURCE": _export("", expected="SOURCE is empty"),
    "blank SOURCE": _export("  ", expected="SOURCE is empty"),
    "missing path": _export("{tmp}/nope", expected="not a file, a directory, a zoo name"),
    "missing .onnx": _export("{tmp}/nope.onnx", expected="no such file"),
    "a directory named .onnx": _made(_dir("d.onnx"), r"d\.onnx: a directory, not a file"),
    "a device as SOURCE": _export("/dev/zero", expected=r"/dev/zero: not a regular file "
                                                        r"\(a device, pipe or socket\)"),
    "a file that is not .onnx": _made(_file("notes.txt", b"hi"), "a file that is not .onnx"),
    "text as .onnx": _made(_file("m.onnx", b"this is not a model\n"),
                           "not an ONNX model|not a readable ONNX file"),
    "empty .onnx": _made(_file("m.onnx", b""), "not an ONNX model"),
    "random bytes as .onnx": _made(_file("m.onnx", os.urandom(4096)),
                                   "not a readable ONNX file|not an ONNX model"),
    "truncated .onnx": _made(_onnx_edit(_truncate), "not a readable ONNX file|not an ONNX"),
    "external data missing": _made(_onnx_edit(_external_missing),
                                   r"external data file\(s\) m\.onnx\.data, not found"),
    "vtc's own model.onnx": _made(_onnx_edit(_already_compressed), "already compressed"),
    "ONNX without attention": _made(_onnx_edit(_no_attention), "no transformer block found"),
    "ONNX opset 99": _made(_onnx_edit(_opset(99)), r"ONNX opset 99, outside the 7\.\.\d+"),
    "ONNX opset 5": _made(_onnx_edit(_opset(5)), r"ONNX opset 5, outside"),
    "ONNX IR version 99": _made(_onnx_edit(_opset(18, 99)), "ONNX IR version 99, outside"),
    "ONNX image input of int64": _made(_onnx_edit(_int64_input), r"the graph's only input, "
                                       r"pixel_values \[2, 3, 32, 32\] \(INT64\), is not an "
                                       r"image"),
    "directory without config": _made(_ckpt(_without("config.json")), "has no config.json"),
    "config.json a list": _made(_ckpt(_write("config.json", b"[1, 2]")), "holds a list"),
    "config.json not UTF-8": _made(_ckpt(_write("config.json", b"\xff\xfe{")),
                                   "not readable UTF-8 JSON"),
    "config.json not JSON": _made(_ckpt(_write("config.json", b"{model_type: vit")),
                                  "not readable UTF-8 JSON"),
    "config.json without model_type": _made(_ckpt(_set_config(model_type=None)),
                                            "has no model_type"),
    "unsupported model_type": _made(_ckpt(_set_config(model_type="swin")),
                                    "model_type 'swin' is not supported"),
    "empty safetensors": _made(_ckpt(_write("model.safetensors", b"")),
                               "not a complete safetensors file"),
    "garbage safetensors": _made(_ckpt(_write("model.safetensors", os.urandom(2048))),
                                 "not a complete safetensors file"),
    "truncated safetensors": _made(_ckpt(lambda d: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes()[:5000])), "not a complete safetensors file"),
    "weights of the wrong shape": _made(_ckpt(_wrong_shape), "another shape than its config"),
    "no weights": _made(_ckpt(_without("model.safetensors")), "has no \\*.safetensors"),
    "pickle without --allow-pickle": _made(_ckpt(_pickle_only(False)), "--allow-pickle"),
    "garbage pickle with --allow-pickle": _made(
        lambda t, f: [*_ckpt(_pickle_only(True))(t, f), "--allow-pickle"],
        r"pytorch_model\.bin is not a PyTorch checkpoint \(neither the zip format of "
        r"torch\.save nor a pickle; 12 bytes starting with 6e 6f 74 20\); give"),
    "empty pickle with --allow-pickle": _made(
        lambda t, f: [*_ckpt(_pickle_bytes(lambda: b""))(t, f), "--allow-pickle"],
        r"pytorch_model\.bin is empty \(0 bytes\)"),
    "truncated torch.save with --allow-pickle": _made(
        lambda t, f: [*_ckpt(_pickle_bytes(_truncated_torch_save))(t, f), "--allow-pickle"],
        r"pytorch_model\.bin is a damaged PyTorch checkpoint \(a truncated zip archive\)"),
    "a pickle weights_only refuses": _made(
        lambda t, f: [*_ckpt(_pickle_bytes(_global_pickle))(t, f), "--allow-pickle"],
        r"pytorch_model\.bin is a pickle torch's weights_only loader refuses \(.*GLOBAL "
        r"posix\.system.*\): not a plain state dict of tensors.*convert it to safetensors$"),
    "a Git LFS pointer as pickle": _made(
        lambda t, f: [*_ckpt(_pickle_bytes(
            lambda: b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n"))(t, f),
            "--allow-pickle"], r"pytorch_model\.bin is a Git LFS pointer"),
    "config.json transformers refuses": _made(_ckpt(_set_config(hidden_size="big")),
                                              r"config\.json: transformers refuses it \("),
    "preprocessor_config.json not JSON": _made(
        _ckpt(_write("preprocessor_config.json", b"{image_mean")),
        r"preprocessor_config\.json: not readable UTF-8 JSON"),
    "preprocessor_config.json a list": _made(
        _ckpt(_write("preprocessor_config.json", b"[1, 2]")),
        r"preprocessor_config\.json holds a list, not a mapping"),
    "integer weights": _made(_ckpt(_weights(lambda v: (v * 100).long())),
                             r"model\.safetensors: .* is I64, and \d+ weight\(s\) in all are "
                             "not floating point"),
    "NaN weights": _made(_ckpt(_weights(lambda v: v * float("nan"))),
                         "holds NaN or infinite values"),
    "--protected on an HF source": _export("{vit}", "--protected", "1",
                                           expected="--protected is for ONNX sources"),
    "--protected too large": _export("{vit_onnx}", "--protected", "1000",
                                     expected="--protected 1000 leaves"),
    "static batch and --batch": _export("{vit_onnx}", "--batch", "4",
                                        expected="static batch of 2, not --batch 4"),
    "dynamic batch from a static file": _export(
        "{vit_onnx}", "--set", "export.dynamic_batch=true", expected="has a static batch"),
    "symbolic height without image_size": _export(
        "{optimum_onnx}", expected=r"symbolic height/width.*--set export\.image_size"),
    "image_size the graph cannot take": _export(
        "{optimum_onnx}", "--set", "export.image_size=16",
        expected="is it a resolution this graph accepts"),
    "image_size not a multiple of the patch": _recipe("export.image_size=36",
                                                      "a multiple of 8"),
    "absurd batch": _export("{vit}", "--batch", "50000000", expected="lower --batch"),
    "absurd sample count": _recipe("validate.samples=900000000", "lower --batch"),
    "images folder without images": _made(_images({"a.txt": b"x"}), "no image files"),
    "images folder of corrupt images": _made(_images({"a.png": b"nope", "b.jpg": b"x"}),
                                             "no readable images"),
    "images folder of 0-byte images": _made(_images({"a.png": b"", "b.jpeg": b""}),
                                            "no readable images"),
    "images folder with a decompression bomb": Case(lambda t, f: (
        "export", [*_images({"bomb.png": _bomb_png()})(t, f), *FAST, "--set", "tome.r=2",
                   "--out", str(t / "out")], "no readable images")),
}

OUT_CASES: dict[str, Case] = {
    "--out is the source": _export("{vit}", "--out", "{vit}", "--force",
                                   expected="is the source"),
    "--out inside the source": _export("{vit}", "--out", "{vit}/sub", "--force",
                                       expected="lies inside the source"),
    "--out holds the source": _export("{vit}", "--out", "{vit}/..", "--force",
                                      expected="contains the source"),
    "--out holds the .onnx source": _export("{vit_onnx}", "--out", "{tmp}/vit_onnx", "--force",
                                            expected="contains the source"),
    "--out is .": _export("{vit}", "--out", ".", "--force", expected="working directory"),
    "--out is ..": _export("{vit}", "--out", "..", "--force", expected="working directory"),
    "--out is /": _export("{vit}", "--out", "/", "--force", expected="working directory"),
    "--out under /proc": _export("{vit}", "--out", "/proc/vtc-out",
                                 expected="cannot be written|cannot create"),
    "--out a dangling link": _made(_out_symlink, "dangling symbolic link"),
    "--out a file": _made(_out_file, "is a file"),
    "--out not empty": _made(_out_not_empty, "pass --force"),
    "--out name too long": _export("{vit}", "--out", "{tmp}/" + "n" * 230,
                                   expected="bytes long"),
    "--out empty": _export("{vit}", "--out", "", expected="--out is empty|working directory"),
    "--out is the zoo cache": _export("{vit}", "--out", "{home}", "--force",
                                      expected="is the zoo cache"),
    "--out inside the zoo cache": _export("{vit}", "--out", "{home}/models/x",
                                          expected="lies inside the zoo cache"),
}

RECIPE_CASES: dict[str, Case] = {
    **{f"--set {s}": _recipe(s, e) for s, e in [
        ("export.batch=0", "export.batch: Input should be greater than or equal to 1"),
        ("export.batch=-3", "greater than or equal to 1"),
        ("export.opset=5", "opset 5 is not supported"),
        ("export.opset=99", "opset 99 is not supported"),
        ("export.image_size=0", "export.image_size"),
        ("export.image_size=-224", "export.image_size"),
        ("export.dynamic_batch=maybe", "export.dynamic_batch"),
        ("validate.samples=0", "validate.samples"),
        ("validate.samples=-1", "validate.samples"),
        ("validate.repeats=0", "validate.repeats"),
        ("validate.warmup=-1", "validate.warmup"),
        ("validate.min_time_s=-1", "validate.min_time_s"),
        ("validate.min_time_s=.nan", "validate.min_time_s"),
        ("validate.seed=-5", "validate.seed"),
        ("validate.probe_train=1", "validate.probe_train"),
        ("validate.probe_test=0", "validate.probe_test"),
        ("validate.dataset=imagenet", "unknown dataset 'imagenet'"),
        ("backend.threads=-1", "backend.threads"),
        ("backend.threads=0", "backend.threads"),
        ("backend.threads=4.3e16", "backend.threads"),
        ("validate.repeats=1e12", "validate.repeats"),
        ("validate.seed=99999999999", "validate.seed"),
        ("backend.providers=[]", "backend.providers"),
        ("backend.kind=tflite", "unknown engine 'tflite'"),
        ("backend.providers=[CUDAExecutionProvider]",
         "CUDAExecutionProvider is not in the installed onnxruntime .*onnxruntime-gpu"),
        ("backend.precision=fp8", "backend.precision"),
        ("backend.options={{device: CPU}}", "options.device is not a setting of the ort engine"),
        ("backend.kind=openvino --set backend.options={{devcie: CPU}}",
         "options.devcie is not a setting of the openvino engine .*device, performance_hint"),
        ("backend.kind=openvino --set backend.options.device=NPU7",
         "OpenVINO .* has no device 'NPU7' here .*CPU"),
        ("backend.kind=openvino --set backend.precision=fp16",
         "precision fp16 is not supported yet"),
        ("backend.kind=openvino --set backend.precision=int8",
         "backend.kind openvino: precision int8 is not supported .*deploys fp32"),
        ("backend.precision=int8 --set backend.providers=[CUDAExecutionProvider]",
         "int8 runs on the CPU execution provider only"),
        ("backend.kind=openvino --set backend.providers=[CUDAExecutionProvider]",
         "ONNX Runtime's settings; with backend.kind openvino drop them"),
        ("backend.kind=openvino --set backend.options.performance_hint=fast",
         "options.performance_hint"),
        ("backend.cuda_graph=on", "cuda_graph: on needs the CUDA execution provider"),
        ("backend.provider_options={{CPUExecutionProvider: {{use_tf32: 0}}}}",
         "takes no provider options"),
        ("backend.provider_options={{CUDAExecutionProvider: {{use_tf32: 0}}}}",
         "which backend.providers does not request"),
        ("gates.min_deploy_cosine=0.99", "judge a deployed engine that differs"),
        ("gates.min_speedup=.nan", "not finite"),
        ("gates.min_speedup=.inf", "not finite"),
        ("gates.max_latency=3", "unknown gate"),
        ("gates.max_accuracy_drop=1", "need validate.dataset"),
        ("tome.r=-1", "r must be >= 0"),
        ("tome.r=1000", "impossible"),
        ("tome.r=[1,1]", "one value per block"),
        ("tome.r=eight", "tome.r"),
        ("tome.r=true", "r=true is a yes/no value; r takes a number"),
        ("validate.samples=on", "samples=true is a yes/no value; samples takes a number"),
        ("export.batch=false", "batch=false is a yes/no value"),
        ("tome.flops_ratio=0.5", "flops_ratio=0.5 must be >= 1.0"),
        ("tome.layers=[-1]", "negative"),
        ("tome.layers=[7]", r"tome\.layers \[7\] are outside"),
        ("tome.layers=[1,1]", "twice"),
        ("tome.protected=middle", "tome.protected"),
        ("tome.proportional_attention=perhaps", "tome.proportional_attention"),
        ("unmerge=sometimes", "unmerge"),
        ("method=prune", "unknown reduction method 'prune'"),
        ("method=[tome,tome]", "names a method twice"),
        ("method=42", "method"),
        ("name=[1,2]", "name"),
        # a quoted number is text, not the number pydantic would make of it
        ("validate.samples='8'", "samples='8' is text; samples takes a number"),
        ("tome.r='2'", "r='2' is text"),
        ("export.opset='18'", "opset='18' is text"),
        ("tome.r=[2,'2',2]", "r='2' is text"),
        ("tome.layers=[true]", "layers=true is a yes/no value"),
        ("gates.min_speedup='1.5'", r"gates\.min_speedup='1\.5' is text"),
        # a gate that can never fail is no gate
        ("gates.min_speedup=-1", r"gates\.min_speedup=-1 can never fail \(the metric is at "
                                 r"least 0\)"),
        ("gates.min_top1_agreement=0", "min_top1_agreement=0 can never fail"),
        ("gates.min_fidelity_cosine=-1", "min_fidelity_cosine=-1 can never fail"),
        # the generate section is a vision-language bundle's
        ("generate.precision=int4", r"generate\.precision: settings of vision-language "
                                    "bundles; this source is an encoder"),
        ("gates.min_tokens_equal=1", r"gates\.min_tokens_equal: settings of vision-language "
                                     "bundles"),
    ]},
    "flops_ratio out of reach": _export("{vit}", "--set", "tome.r=null", "--set",
                                        "tome.flops_ratio=50", expected="cannot be reached"),
    "a chain over overlapping blocks": _export(
        "{vit}", "--set", "method=[tome,evit]", "--set", "evit.layers=[1]",
        expected=r"tome and evit both act in blocks \[1\]"),
    "evit keep_rate 0": _export("{vit}", "--recipe", "evit-keep70", "--set",
                                "evit.keep_rate=0", expected="outside"),
    "evit keep_rate 1.5": _export("{vit}", "--recipe", "evit-keep70", "--set",
                                  "evit.keep_rate=1.5", expected="outside"),
    "evit keep and keep_rate": _export("{vit}", "--recipe", "evit-keep70", "--set",
                                       "evit.keep=3", expected="exactly one of keep_rate"),
    "evit keep too large": _export("{vit}", "--recipe", "evit-keep70", "--set",
                                   "evit.keep_rate=null", "--set", "evit.keep=99",
                                   "--set", "evit.layers=[1]", expected="only 16 unprotected"),
    "evit fuse unknown": _export("{vit}", "--recipe", "evit-keep70", "--set", "evit.fuse=max",
                                 expected="evit.fuse"),
    # the shipped recipe scales its blocks to the depth; blocks given outside it are refused
    "evit layers outside": _export("{vit}", "--recipe", "evit-keep70", "--set",
                                   "evit.layers=[3,6,9]", expected="outside 0..2"),
    "evit cls score without a CLS token": _export(
        "{vit_onnx}", "--protected", "0", "--recipe", "evit-keep70", "--set", "evit.layers=[1]",
        expected=r"evit\.score=cls .* no CLS .* set evit\.score=mean"),
    "evit score unknown": _export("{vit}", "--recipe", "evit-keep70", "--set",
                                  "evit.score=max", expected="evit.score"),
    "two image inputs, no input.name": _made(
        _onnx_edit(_two_image_inputs),
        expected=r"2 inputs \(pixel_values \[2, 3, 32, 32\], aux \[2, 3, 32, 32\]\); set "
                 r"input\.name"),
    "input.name not a graph input": _export(
        "{vit_onnx}", "--set", "input.name=image",
        expected=r"input\.name='image' is not an input of the graph; its inputs: pixel_values"),
    "input.name on an HF model": _recipe("input.name=image", "an HF model takes one input"),
    "input.channels not the graph's": _recipe(
        "input.channels=1", r"input\.channels=1 does not match the model .* takes 3 channels"),
    "input.channels not the ONNX graph's": _export(
        "{vit_onnx}", "--set", "input.channels=1",
        expected=r"input\.channels=1 does not match the graph input 'pixel_values'"),
    "input.mean of the wrong length": _recipe("input.mean=[0.5]",
                                              r"input\.mean has 1 values .* 3 channels"),
    "input.std zero": _recipe("input.std=[0.2,0,0.2]", "must be positive"),
    "input.resize unknown": _recipe("input.resize=fill", "input.resize"),
    "input.channels 2": _recipe("input.channels=2", "input.channels"),
    "task cannot be imported": _recipe("validate.task=no_such_pkg_xyz.mod:score",
                                       r"validate\.task 'no_such_pkg_xyz\.mod:score': no "
                                       r"module no_such_pkg_xyz in PYTHONPATH"),
    "task given as a file name": _recipe("validate.task=mytask.py:score",
                                         r"mytask\.py is a file name; give the module"),
    "tokens_out merged on a logits model": _recipe(
        "tokens_out=merged", r"tokens_out: merged, but no output of this graph is the token "
                             r"sequence .*\(logits \[2, 10\] is one vector per image"),
    "tokens_out merged on a logits ONNX graph": _export(
        "{vit_onnx}", "--set", "tokens_out=merged",
        expected=r"tokens_out: merged, .*logits \[2, 10\]"),
    "tokens_out merged with nothing reduced": _export(
        "{vit_onnx}", "--set", "tokens_out=merged", "--set", "tome.r=0", tome=False,
        expected=r"tokens_out: merged, .*logits \[2, 10\]"),
    "task raises": _recipe("validate.task=tests.task_fns:boom",
                           r"validate\.task 'tests\.task_fns:boom' raised RuntimeError"),
    "task returns non-numbers": _recipe("validate.task=tests.task_fns:words",
                                        r"'tests\.task_fns:words' returned exact_match='high'"),
    "task not an import path": _recipe("validate.task=task.py", "not an import path"),
    "task gate without a task": _recipe("gates={{min_task.exact_match: 0.9}}",
                                        r"need validate\.task"),
    "pitome margin 1.5": _export("{vit}", "--recipe", "pitome-r8", "--set", "pitome.r=2",
                                 "--set", "pitome.margin=1.5", expected=r"outside \[-1, 1\)"),
    "pitome margin -2": _export("{vit}", "--recipe", "pitome-r8", "--set", "pitome.r=2",
                                "--set", "pitome.margin=-2", expected=r"outside \[-1, 1\)"),
    "pitome margin NaN": _export("{vit}", "--recipe", "pitome-r8", "--set", "pitome.r=2",
                                 "--set", "pitome.margin=.nan", expected=r"outside \[-1, 1\)"),
    "pitome alpha inf": _export("{vit}", "--recipe", "pitome-r8", "--set",
                                "pitome.alpha=.inf", expected=r"alpha=inf is outside \[-10, 10\]"),
    "pitome r too large": _export("{vit}", "--recipe", "pitome-r8", "--set", "pitome.r=9",
                                  expected="impossible"),
    "--set without =": _export("{vit}", "--set", "tome.r", expected="expected key=value"),
    "--set with an empty value": _export("{vit}", "--set", "tome.r=", expected=(
        r"--set 'tome\.r=': the value is empty \(an unset shell variable\?\); give a value, "
        r"or tome\.r=null")),
    "--set into a scalar": _export("{vit}", "--set", "name.x=1", expected="is not a section"),
    "--set malformed YAML": _export("{vit}", "--set", "tome.r=[1,",
                                    expected=r"--set tome\.r=\[1,.*not valid YAML"),
    "--set names the --set": _export("{vit}", "--set", "validate.samples=0",
                                     expected="with --set .*validate.samples=0"),
    "unknown recipe name": _export("{vit}", "--recipe", "tome-r99", expected="not found"),
    "recipe file missing": _export("{vit}", "--recipe", "{tmp}/no.yaml", expected="not found"),
    "recipe a directory": _export("{vit}", "--recipe", "{tmp}", expected="is a directory; give a "
                                  "YAML file"),
    "recipe a device": _export("{vit}", "--recipe", "/dev/zero", expected="is not a regular "
                               r"file \(a device, pipe or socket\)"),
    "binary recipe file": _made(_recipe_file(os.urandom(300) + b"\xff\xfe"),
                                "not valid YAML text"),
    "recipe a YAML list": _made(_recipe_file(b"- a\n- b\n"), "a mapping at the top level"),
    "recipe with a duplicate key": _made(
        _recipe_file(b"name: x\nmethod: tome\ntome:\n  r: 2\n  r: 3\n"),
        "'r' is given twice"),
    "recipe with an unknown key": _made(
        _recipe_file(b"name: x\nmethod: tome\nspeed: fast\n"), "unknown key 'speed'"),
    "recipe without a name": _made(_recipe_file(b"method: tome\n"), "name: Field required"),
    "recipe invalid YAML": _made(_recipe_file(b"name: [unclosed\n"), "not valid YAML"),
    "recipe nested too deeply": _made(_recipe_file(b"name: " + b"[" * 5000 + b"]" * 5000),
                                      r"not valid YAML text \(nested too deeply\)"),
    "recipe a billion laughs": _made(_recipe_file(_laughs()),
                                     "expands to more than 100,000 values"),
}

OTHER_CASES: dict[str, Case] = {
    "inspect a missing file": _vtc("inspect", "{tmp}/no.onnx", expected="no such file"),
    "inspect a text file": Case(lambda t, f: (
        "main", ["inspect", *_file("m.onnx", b"not a model")(t, f)],
        "not an ONNX model|not a readable ONNX file")),
    "lint-trt an empty file": Case(lambda t, f: (
        "main", ["lint-trt", *_file("m.onnx", b"")(t, f)], "no graph nodes or inputs")),
    "inspect a graph without attention": Case(lambda t, f: (
        "main", ["inspect", *_onnx_edit(_no_attention)(t, f)], "no transformer block")),
    "inspect symbolic sizes": _vtc("inspect", "{optimum_onnx}",
                                   expected="vtc inspect: --image-size 224"),
    "sweep: empty SOURCE": _vtc("sweep", "", "--values", "r=0,2", "--out", "{tmp}/s",
                                expected="SOURCE is empty"),
    "sweep: malformed values": _vtc("sweep", "{vit}", "--values", "r=1,,2", "--out",
                                    "{tmp}/s", expected="expected KEY=v1,v2"),
    "sweep: a value twice": _vtc("sweep", "{vit}", "--values", "r=2,2", "--out", "{tmp}/s",
                                 expected="given twice"),
    "sweep: key of another method": _vtc("sweep", "{vit}", "--values", "keep_rate=0.5",
                                         "--out", "{tmp}/s", expected="evit setting"),
    "sweep: impossible value": _vtc("sweep", "{vit}", "--values", "r=0,99", "--out",
                                    "{tmp}/s", expected="r=99: tome.r=99"),
    "sweep: --out is the source": _vtc("sweep", "{vit}", "--values", "r=0", "--out", "{vit}",
                                       "--force", expected="is the source"),
    "sweep: two series, same name": _vtc("sweep", "{vit}", "-r", "tome", "-r", "tome",
                                         "--values", "r=0", "--out", "{tmp}/s",
                                         expected="two series named"),
    "zoo: unknown model": _vtc("zoo", "fetch", "resnet-50", expected="resnet-50"),
    "zoo: path not fetched": _vtc("zoo", "path", "dinov2-small", expected="is not fetched"),
    "data: unknown dataset": _vtc("data", "install", "imagenet", expected="imagenet"),
}

CASES = {**SOURCE_CASES, **OUT_CASES, **RECIPE_CASES, **OTHER_CASES, **CLIP_CASES}


def test_the_table_is_large() -> None:
    assert len(CASES) >= 100


@pytest.fixture(scope="module")
def vit_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint once; each case copies its files."""
    path = tmp_path_factory.mktemp("ckpt") / "vit"
    _, model = build_variant("vit-cls")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def clip_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny full CLIP checkpoint (vision + text + tokenizer) once."""
    from tests.tiny_clip import full_clip_dir

    return full_clip_dir(tmp_path_factory.mktemp("clip") / "clip")


@pytest.fixture(scope="module")
def optimum_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import export, tiny_vit

    return export(tiny_vit(), tmp_path_factory.mktemp("opt") / "optimum.onnx", dynamo=False,
                  dynamic_axes=True)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_exit_2(name: str, tmp_path: Path, vit_onnx: Path,
                                          vit_ckpt: Path, optimum_onnx: Path, clip_ckpt: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    shutil.copytree(vit_ckpt, work / "vit")
    shutil.copytree(clip_ckpt, work / "clip")
    (work / "vit_onnx").mkdir()
    (work / "vit_onnx" / "vit.onnx").write_bytes(vit_onnx.read_bytes())
    (work / "optimum.onnx").write_bytes(optimum_onnx.read_bytes())
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    fx = {"vit": work / "vit", "vit_onnx": work / "vit_onnx" / "vit.onnx",
          "optimum_onnx": work / "optimum.onnx", "home": home, "clip": work / "clip"}
    monkeypatch.setenv("VTC_HOME", str(home))
    monkeypatch.setenv("VTC_CRASH_DIR", str(work))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    command, argv, expected = CASES[name].build(work, fx)
    before = _snapshot(tmp_path)
    res = CliRunner().invoke(export_main if command == "export" else main, argv)
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith(("error:", "internal"))]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    assert re.search(expected, lines[0]), lines[0]
    assert _snapshot(tmp_path) == before  # nothing written, nothing changed


def test_a_second_writer_is_told_who_holds_the_lock(tmp_path: Path, vit_dir: Path) -> None:
    out = tmp_path / "out"
    lock = tmp_path / ".out.lock"
    with lock.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fh.write(json.dumps({"pid": 4242, "host": "ci", "since": 0, "command": "vtc-export x"}))
        fh.flush()
        res = CliRunner().invoke(export_main, [str(vit_dir), "--out", str(out), *FAST])
    assert res.exit_code == 2
    assert "being written by another vtc run (pid 4242 on ci" in res.stderr
    assert not out.exists()
