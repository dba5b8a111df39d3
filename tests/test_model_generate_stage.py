"""`vaura generate VIDEO -o OUT.mp4` end to end on tiny offline stand-ins (codec, visual encoder, decoder)."""

import numpy as np
import pytest
import torch
import yaml

from vaura.cli import main
from vaura.config import load_section, to_dict
from vaura.media import probe, read_audio, write_video
from vaura.model import VAURA, named_size


@pytest.fixture(scope="module")
def project(tmp_path_factory, repo_root):
    """A repo root with params.yaml, a codec stand-in, a visual stand-in and a trained-checkpoint file."""
    import dac

    from vaura.codec import CodecConfig
    from vaura.codec.codec import offline_checkpoint, offline_codec_path
    from vaura.train.checkpoint import save_checkpoint
    from vaura.visual import MotionFormer, VisualConfig
    from vaura.visual.encoder import size_from_config, standin_path, standin_payload

    root = tmp_path_factory.mktemp("project")
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    torch.manual_seed(0)
    codec_cfg = load_section(CodecConfig, "codec", params)
    kwargs = codec_cfg.offline.dac_kwargs()
    path = offline_codec_path(root, "data")
    path.parent.mkdir(parents=True)
    torch.save(offline_checkpoint(dac.DAC(**kwargs), kwargs, codec_cfg.n_quantizers), path)
    visual_cfg = load_section(VisualConfig, "visual", params)
    standin = standin_path(root, params["paths"]["data"])
    standin.parent.mkdir(parents=True)
    torch.save(standin_payload(MotionFormer(size_from_config(visual_cfg))), standin)
    cfg = named_size("tiny")
    dims = dict(n_codebooks=codec_cfg.n_quantizers, codebook_size=codec_cfg.offline.codebook_size,
                codebook_dim=codec_cfg.offline.codebook_dim,
                audio_frame_rate=codec_cfg.offline.sample_rate / int(np.prod(codec_cfg.offline.encoder_rates)),
                visual_dim=visual_cfg.dim, visual_frame_rate=12.5)
    model = VAURA(cfg, **dims)
    save_checkpoint(root / "data" / "train" / "best.pt",
                    {"model": model.state_dict(), "model_config": to_dict(cfg), "model_dims": dims})
    frames = np.random.default_rng(0).integers(0, 255, (80, 64, 96, 3), dtype=np.uint8)  # 3.2 s > one window
    write_video(root / "clip.mp4", frames, 25.0)
    return root


def test_generate_writes_the_video_with_generated_audio(project):
    out = project / "out.mp4"
    rc = main(["generate", str(project / "clip.mp4"), "-o", str(out), "--params", str(project / "params.yaml"),
               "--root", str(project), "--seed", "3", "--cfg-scale", "2"])
    assert rc == 0
    info = probe(out)
    assert info.has_video and info.has_audio
    assert abs(info.duration_s - 3.2) < 0.1
    audio = read_audio(out, 16000)
    assert np.abs(audio).max() > 0  # not silence: the decoded codes made it into the file


def test_generate_reports_missing_checkpoint(project, capsys):
    rc = main(["generate", str(project / "clip.mp4"), "-o", str(project / "x.mp4"), "--params",
               str(project / "params.yaml"), "--root", str(project), "--checkpoint", str(project / "nope.pt")])
    assert rc == 1
    assert "nope.pt" in capsys.readouterr().err


def test_generate_reports_released_checkpoint_missing_with_download_hint(project, capsys):
    rc = main(["generate", str(project / "clip.mp4"), "-o", str(project / "x.mp4"), "--params",
               str(project / "params.yaml"), "--root", str(project), "--checkpoint", str(project / "vaura.ckpt")])
    assert rc == 1
    assert "download" in capsys.readouterr().err


def test_generate_off_cuda_decodes_eagerly_and_says_why_once(project, capsys, monkeypatch):
    import vaura.model.sampler as sampler

    monkeypatch.setattr(sampler, "_fallback_said", set())
    flags = []
    real = sampler.generate

    def spy(*args, **kwargs):
        flags.append(args[9] if len(args) > 9 else kwargs.get("compile", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(sampler, "generate", spy)
    rc = main(["generate", str(project / "clip.mp4"), "-o", str(project / "auto.mp4"), "--params",
               str(project / "params.yaml"), "--root", str(project), "--device", "cpu"])
    assert rc == 0
    assert flags == [False, False]  # two windows for 3.2 s, both eager
    assert capsys.readouterr().err.count("eager decoding") == 1


def test_generate_refuses_a_compiled_decode_it_cannot_run(project, capsys):
    out = project / "compiled.mp4"
    rc = main(["generate", str(project / "clip.mp4"), "-o", str(out), "--params", str(project / "params.yaml"),
               "--root", str(project), "--device", "cpu", "--decode", "compiled"])
    assert rc == 1 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "generation.decode=compiled" in err[0] and "cpu" in err[0]


def test_generate_refuses_to_overwrite_its_input_before_any_work(project, capsys):
    """Same file (also via symlink / hard link) or a folder as -o: one line, exit 1, the input untouched. The
    checkpoint given does not exist, so an error about the output proves it was checked first."""
    import os

    src = project / "clip.mp4"
    before = src.read_bytes()
    (project / "alias.mp4").symlink_to(src)
    os.link(src, project / "hard.mp4")
    (project / "outdir").mkdir()
    for out, why in ((src, "is the input"), (project / "alias.mp4", "is the input"), (project / "hard.mp4", "is the input"),
                     (project / "outdir", "is a folder")):
        rc = main(["generate", str(src), "-o", str(out), "--params", str(project / "params.yaml"), "--root", str(project),
                   "--checkpoint", str(project / "missing.pt")])
        err = capsys.readouterr().err.strip()
        assert rc == 1 and len(err.splitlines()) == 1 and why in err and str(out) in err
    assert src.read_bytes() == before
