"""The Omniglot domain: both data forms and their errors, episodes, the batched conv
meta-step against a per-task loop, predict's contract, and a tiny train/eval/resume run."""

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from meta_reference import meta_loss
from PIL import Image

from mumo_fast.cli import main
from mumo_fast.domains.omniglot import data as omni
from mumo_fast.domains.omniglot.episodes import EpisodeSampler
from mumo_fast.domains.omniglot.presets import run_config
from mumo_fast.meta import MetaLearner, TaskBatch

SHARED = Path(
    os.environ.get("MUMO_FAST_DATA")
    or Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
)
needs_data = pytest.mark.skipif(
    not (SHARED / "images_background.npz").is_file(),
    reason=f"the offline Omniglot copy is not at {SHARED} (set MUMO_FAST_DATA)",
)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """One resize cache for the whole test session, never the user's."""
    monkeypatch.setenv(omni.ENV_CACHE, str(tmp_path_factory.getbasetemp() / "omniglot_cache"))


@pytest.fixture(scope="module")
def full():
    if not (SHARED / "images_background.npz").is_file():
        pytest.skip(f"the offline Omniglot copy is not at {SHARED}")
    return omni.load_omniglot(SHARED)


# -- synthetic archives ------------------------------------------------------------------
def _png(rng: np.random.Generator) -> bytes:
    ink = rng.random((105, 105)) < 0.1
    buf = io.BytesIO()
    Image.fromarray(np.where(ink, 0, 255).astype(np.uint8)).convert("1").save(buf, "PNG")
    return buf.getvalue()


def _write_zip(path: Path, chars: dict[int, tuple[str, str]], drawers: int = 20, extra=()):
    rng = np.random.default_rng(len(chars))
    with zipfile.ZipFile(path, "w") as z:
        for char_id, (alphabet, character) in chars.items():
            for d in range(1, drawers + 1):
                z.writestr(
                    f"images_background/{alphabet}/{character}/{char_id:04d}_{d:02d}.png", _png(rng)
                )
        for name in extra:
            z.writestr(name, b"x")


def test_official_form_reads_pngs_and_reports_incomplete_splits(tmp_path):
    _write_zip(
        tmp_path / "images_background.zip",
        {3: ("Alpha", "character03"), 1: ("Alpha", "character01")},
    )
    data = omni.load_omniglot(tmp_path)
    assert data.ids.tolist() == [1, 3]
    assert data.images.shape == (2, 20, 28, 28) and data.images.dtype == torch.uint8
    assert data.alphabets == ["Alpha", "Alpha"] and data.characters == [
        "character01",
        "character03",
    ]
    assert 0 < data.images.float().mean() < 255  # grey levels from the area filter
    assert "train split (1200 characters): incomplete, 2 of 1200" in data.completeness()
    with pytest.raises(
        omni.DataError,
        match=r"train split needs character ids 1-1200.*lacks 1198 of them \(2, 4-1200\)",
    ):
        data.split("train")
    with pytest.raises(omni.DataError, match=r"test split .*images_evaluation.zip"):
        data.split("test")


def test_archive_member_outside_the_folder_is_refused(tmp_path):
    _write_zip(tmp_path / "images_background.zip", {1: ("A", "character01")}, extra=["../evil.png"])
    with pytest.raises(omni.DataError, match=r"refusing the archive member '\.\./evil\.png'"):
        omni.load_omniglot(tmp_path, cache=False)
    assert not (tmp_path.parent / "evil.png").exists()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: (p / "images_background.zip").write_bytes(b"not a zip"), "not a readable zip"),
        (
            lambda p: _write_zip(
                p / "images_background.zip", {1: ("A", "character01")}, drawers=19
            ),
            "fewer than 20 drawers",
        ),
        (
            lambda p: np.savez(
                p / "images_background.npz", images=np.ones((2, 20, 105, 105), bool)
            ),
            "lacks images_evaluation.npz, characters.csv",
        ),
        (lambda p: (p / "notes.txt").write_text("x"), "holds no Omniglot data"),
    ],
    ids=["broken-zip", "missing-drawer", "missing-npz-files", "empty-folder"],
)
def test_bad_folders_name_the_problem(tmp_path, make, match):
    make(tmp_path)
    with pytest.raises(omni.DataError, match=match):
        omni.load_omniglot(tmp_path, cache=False)


@needs_data
def test_damaged_npz_is_caught_by_its_checksum(tmp_path):
    for name in ("images_evaluation.npz", "characters.csv"):
        (tmp_path / name).symlink_to(SHARED / name)
    raw = bytearray((SHARED / "images_background.npz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (tmp_path / "images_background.npz").write_bytes(bytes(raw))
    with pytest.raises(omni.DataError, match=r"images_background.npz is damaged"):
        omni.load_omniglot(tmp_path, cache=False)


def test_no_folder_given_says_how_to_give_one(monkeypatch):
    monkeypatch.delenv(omni.ENV_DATA, raising=False)
    with pytest.raises(omni.DataError, match="--data-dir"):
        omni.load_omniglot(None)


# -- the real data -------------------------------------------------------------------------
@needs_data
def test_npz_form_is_complete_and_matches_the_official_pngs(full):
    assert full.images.shape == (1623, 20, 28, 28)
    assert full.completeness() == (
        "train split (1200 characters): complete; test split (423 characters): complete"
    )
    train, test = full.split("train"), full.split("test")
    assert len(train.ids) == 1200 and len(test.ids) == 423
    assert set(train.ids.tolist()).isdisjoint(test.ids.tolist())
    ink = full.images.float().mean().item() / 255
    assert 0.05 < ink < 0.15  # ink is 1 (the .npz stores background as True)
    official = omni.load_omniglot(SHARED / "lake_official")
    assert len(official.ids) == 242
    assert torch.equal(official.images, full.images[official.ids - 1])
    assert official.alphabets == [full.alphabets[i - 1] for i in official.ids.tolist()]


@needs_data
def test_episodes_are_balanced_rotated_and_split_by_character(full):
    train, test = full.split("train"), full.split("test")
    sampler = EpisodeSampler(train, ways=5, shots=2, queries=3)
    assert sampler.num_classes == 4800
    gen = torch.Generator().manual_seed(1)
    eps = sampler.draw(64, gen)
    batch = sampler.batch(eps)
    assert batch.support_x.shape == (64, 10, 1, 28, 28) and batch.query_x.shape == (
        64,
        15,
        1,
        28,
        28,
    )
    for t in range(64):
        assert len(set(eps.classes[t].tolist())) == 5
        assert len(set(eps.drawers[t, 0].tolist())) == 5
        assert torch.bincount(batch.support_y[t], minlength=5).tolist() == [2] * 5
        assert torch.bincount(batch.query_y[t], minlength=5).tolist() == [3] * 5
    # class 4c + r is character c rotated by r quarter turns, and the labels follow the classes
    cls, drawer = int(eps.classes[0, 1]), int(eps.drawers[0, 1, 0])
    char, rot = divmod(cls, 4)
    want = torch.rot90(train.images[char, drawer], rot).float() / 255
    assert torch.equal(batch.support_x[0, 2, 0], want)  # label 1's first support image
    assert batch.support_x.min() >= 0 and batch.support_x.max() <= 1
    test_chars = set(EpisodeSampler(test, 5, 1).class_character.tolist())
    assert test_chars.isdisjoint(sampler.class_character.tolist())
    # the fixed test episodes are the same whatever was drawn before
    a = EpisodeSampler(test, 5, 1).fixed()
    assert len(a) == 600
    torch.rand(10)
    b = EpisodeSampler(test, 5, 1).fixed()
    assert torch.equal(a.classes, b.classes) and torch.equal(a.drawers, b.drawers)
    episodes, owners = EpisodeSampler(test, 20, 1).alphabet_episodes(2)
    alpha = EpisodeSampler(test, 20, 1).class_alphabet
    assert (alpha[episodes.classes] == owners[:, None]).all()


@needs_data
@pytest.mark.parametrize("method", ["mumomaml", "maml"])
def test_batched_conv_meta_step_matches_a_per_task_loop_in_float64(full, method):
    torch.manual_seed(0)
    sampler = EpisodeSampler(full.split("train"), ways=3, shots=2, queries=2)
    batch = sampler.sample(4, torch.Generator().manual_seed(3))
    batch = TaskBatch(
        batch.support_x.double(), batch.support_y, batch.query_x.double(), batch.query_y
    )
    cfg = {
        "base": "conv4", "num_classes": 3, "conv_channels": 6, "method": method,
        "inner_steps": 2, "inner_lr": 0.4, "encoder_channels": 4, "encoder_aggregator": "gru",
        "inner_grad_clamp": 0.05 if method == "mumomaml" else None,
    }  # fmt: skip
    learner = MetaLearner.from_config(cfg).double()
    learner.meta_train_step(batch, post_mod_loss=False)
    batched = [p.grad.clone() for p in learner.parameters()]
    learner.zero_grad()
    meta_loss(learner, batch).backward()
    for (name, p), g in zip(learner.named_parameters(), batched):
        torch.testing.assert_close(g, p.grad, rtol=1e-9, atol=1e-11, msg=name)


# -- predict's contract --------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_learner():
    torch.manual_seed(0)
    cfg = run_config("mumomaml", "film", 5, 1)["learner"]  # the Omniglot model, narrower
    return MetaLearner.from_config({**cfg, "conv_channels": 4, "encoder_channels": 4}).eval()


def test_predict_returns_logits_for_every_query(tiny_learner):
    gen = torch.Generator().manual_seed(0)
    sx, qx = torch.rand(2, 5, 1, 28, 28, generator=gen), torch.rand(2, 7, 1, 28, 28, generator=gen)
    sy = torch.arange(5).expand(2, -1)
    out = tiny_learner.predict(sx, sy, qx)
    assert out.shape == (2, 7, 5)
    zero = tiny_learner.predict(sx, sy, qx, steps=0)
    assert not torch.allclose(out, zero)  # steps=None means the 3 test-time steps
    torch.testing.assert_close(out, tiny_learner.predict(sx, sy, qx, steps=3))


@pytest.mark.parametrize(
    "change, match",
    [
        (
            lambda sx, sy, qx: (sx[:, :, :, :27], sy, qx),
            r"support_x must have shape \[T, N, 1, 28, 28\]",
        ),
        (
            lambda sx, sy, qx: (sx, sy + 1, qx),
            r"support_y must hold class labels in \[0, 5\), got values in \[1, 5\]",
        ),
        (lambda sx, sy, qx: (sx, sy.float(), qx), r"support_y must be class labels .* dtype long"),
        (lambda sx, sy, qx: (sx, sy, qx * 255), r"query_x must hold values in \[0, 1\]"),
        (lambda sx, sy, qx: (sx, sy, qx[:1]), r"query_x must have T=2 tasks"),
    ],
    ids=["shape", "label-range", "label-dtype", "value-range", "task-count"],
)
def test_predict_rejects_bad_input(tiny_learner, change, match):
    gen = torch.Generator().manual_seed(0)
    sx, qx = torch.rand(2, 5, 1, 28, 28, generator=gen), torch.rand(2, 7, 1, 28, 28, generator=gen)
    sy = torch.arange(5).expand(2, -1)
    with pytest.raises((ValueError, TypeError), match=match):
        tiny_learner.predict(*change(sx, sy, qx))


# -- end to end ------------------------------------------------------------------------------
@needs_data
def test_train_eval_resume_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--data-dir", str(SHARED), "--quiet", "--no-tensorboard", "--threads", "1"]
    args = [
        "train",
        "omniglot",
        "--ways",
        "5",
        "--shots",
        "1",
        "--meta-batch",
        "2",
        "--out",
        str(out),
    ]
    assert (
        main([*args, "--iterations", "4", "--checkpoint-every", "2", "--skip-eval", *common]) == 0
    )
    assert main([*args, "--iterations", "6", "--resume", "--skip-eval", *common]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log if "loss" in r] == [4, 6]
    capsys.readouterr()
    # (the data folder is the run's own; 40 of the 600 fixed episodes keep the test short)
    assert main(["eval", str(out), "--threads", "1", "--test-episodes", "40"]) == 0
    assert "5-way 1-shot" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["trained_iterations"] == 6 and metrics["test_episodes"] == 40
    assert metrics["num_tasks"] == 40 and len(metrics["per_step"]["mean"]) == 4  # 0..3 steps
    assert all(0 <= m <= 100 for m in metrics["per_step"]["mean"])
    assert metrics["run"]["training_seconds"] > 0
    assert main(["plot", str(out), "--threads", "1"]) == 0
    assert {p.name for p in (out / "figures").iterdir()} == {
        "accuracy_vs_steps.png",
        "episode.png",
        "tsne.png",
    }
    assert main(["eval", str(out), "--test-episodes", "601"]) == 2
    assert "--test-episodes must lie in [1, 600]" in capsys.readouterr().err
    assert main([*args, "--resume", "--ways", "20", *common]) == 2
    assert "started with ways=5, not 20" in capsys.readouterr().err


def test_training_without_data_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(omni.ENV_DATA, raising=False)
    code = main(["train", "omniglot", "--out", str(tmp_path / "r"), "--quiet"])
    assert code == 2
    assert "--data-dir" in capsys.readouterr().err
