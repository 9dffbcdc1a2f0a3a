"""Export: ONNX Runtime matches torch within 1e-4 at batch 1 and 7, and the cards validate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from service.cards import load_card
from service.registry import load_model
from training import export, nets
from training.data import load_split
from training.train import TRAINERS, default_config


@pytest.mark.parametrize(
    ("module", "make_inputs", "inputs", "outputs"),
    [
        (nets.GanGenerator(), export._latent_inputs(64), ["z", "label"], ["image"]),
        (nets.VaeDecoder(), export._latent_inputs(16), ["z", "label"], ["image"]),
        (nets.VaeEncoder(), export._labelled_image_inputs, ["image", "label"], ["mu", "logvar"]),
        (nets.UNet(), export._diffusion_inputs, ["x", "t", "label"], ["eps"]),
        (nets.DigitClassifier(), export._image_inputs, ["image"], ["logits", "features"]),
    ],
    ids=["gan", "vae-decoder", "vae-encoder", "unet", "classifier"],
)
def test_onnx_matches_torch_at_batch_1_and_7(
    module: torch.nn.Module, make_inputs, inputs, outputs, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    module.eval()
    path = tmp_path / "m.onnx"
    export.export_onnx(module, make_inputs(2), path, inputs, outputs)
    assert export.parity_error(module, path, make_inputs, inputs) < export.PARITY_ATOL


@pytest.fixture(scope="module")
def trained_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few optimiser steps per family: enough to export, not to be good."""
    ckpt = tmp_path_factory.mktemp("ckpt")
    for family in ("gan", "vae", "diffusion", "classifier"):
        TRAINERS[family](default_config(family, steps=2, batch_size=8, checkpoint_dir=ckpt))
    return ckpt


@pytest.mark.parametrize("family", ["gan", "vae", "diffusion"])
def test_exported_folders_load_as_served_models(trained_checkpoints: Path, tmp_path: Path, family: str) -> None:
    err = export.EXPORTERS[family](tmp_path, trained_checkpoints)
    assert err < export.PARITY_ATOL
    card = load_card(tmp_path / family)
    assert card.family == family and card.provenance.training_steps == 2
    model = load_model(tmp_path / family, device="cpu")
    assert model.card.image_shape == (1, 28, 28)


def test_a_fine_tuned_diffusion_card_names_every_run_its_weights_went_through(
    trained_checkpoints: Path, tmp_path: Path
) -> None:
    # The 2-step run's weights, committed (no optimiser state), then fine-tuned on to step 4.
    first = TRAINERS["diffusion"](
        default_config("diffusion", steps=2, batch_size=8, checkpoint_dir=trained_checkpoints)
    )
    weights = tmp_path / "first.safetensors"
    first.save_weights(weights)
    tuned_dir = tmp_path / "ckpt"
    cfg = default_config(
        "diffusion",
        steps=4,
        batch_size=8,
        lr=1e-4,
        checkpoint_dir=tuned_dir,
        resume_from=weights,
        lr_decay=True,
        label_dropout=0.3,
    )
    TRAINERS["diffusion"](cfg)
    # Resumed again from its own checkpoint, then once more only to write its weights out.
    again = TRAINERS["diffusion"](default_config("diffusion", steps=5, batch_size=8, checkpoint_dir=tuned_dir))
    assert [run["step"] for run in again.history] == [2, 4]
    TRAINERS["diffusion"](default_config("diffusion", steps=5, batch_size=8, checkpoint_dir=tuned_dir))
    export.EXPORTERS["diffusion"](tmp_path / "out", tuned_dir)
    provenance = load_card(tmp_path / "out" / "diffusion").provenance
    assert provenance.training_steps == 5
    # the default run name (the family's) is no option to type
    assert provenance.command.startswith("genserve train diffusion --steps 2 --batch-size 8 --lr 0.0006 (reached")
    assert (
        f"--steps 4 --batch-size 8 --lr 0.0001 --lr-decay --label-dropout 0.3 --resume-from {weights} (reached step 4)"
        in provenance.command
    )
    assert provenance.command.endswith("(reached step 5) && genserve export diffusion && genserve eval diffusion")


def test_a_vae_of_another_shape_resumes_exports_and_names_its_shape(tmp_path: Path) -> None:
    """`genserve train vae --arch res`: the shape is kept by the checkpoint, so a resumed run and the
    export build the same network, and the card's command says how to train it again."""
    ckpt = tmp_path / "ckpt"
    TRAINERS["vae"](default_config("vae", steps=2, batch_size=8, checkpoint_dir=ckpt, vae_arch="res"))
    resumed = TRAINERS["vae"](default_config("vae", steps=3, batch_size=8, checkpoint_dir=ckpt))
    assert resumed.step == 3 and resumed.cfg.vae_arch == "res"
    weights = tmp_path / "vae.safetensors"  # the committed form: weights alone, resumed elsewhere
    resumed.save_weights(weights)
    again = TRAINERS["vae"](
        default_config("vae", steps=4, batch_size=8, checkpoint_dir=tmp_path / "other", resume_from=weights)
    )
    assert again.step == 4 and again.cfg.vae_arch == "res"
    assert any(isinstance(m, nets.ConvRes) for m in resumed.modules["vae"].modules())
    assert export.EXPORTERS["vae"](tmp_path, ckpt) < export.PARITY_ATOL
    card = load_card(tmp_path / "vae")
    # Both runs its weights went through, each with the shape it trained
    runs = card.provenance.command.split(" && ")
    assert [r.split(" (reached")[0] for r in runs[:2]] == [
        "genserve train vae --steps 2 --batch-size 8 --lr 0.001 --arch res",
        "genserve train vae --steps 3 --batch-size 8 --lr 0.001 --arch res",
    ]
    assert runs[2:] == ["genserve export vae", "genserve eval vae"]
    assert load_model(tmp_path / "vae", device="cpu").card.latent_dim == 16


def test_a_vae_exports_the_prior_fitted_to_its_training_posteriors(trained_checkpoints: Path, tmp_path: Path) -> None:
    export.export_vae(tmp_path, trained_checkpoints)
    card = load_card(tmp_path / "vae")
    assert card.prior is not None and card.prior.file == export.PRIOR_FILE
    prior = load_model(tmp_path / "vae", device="cpu").prior
    assert prior is not None and prior.rows == nets.N_LABELS + 1
    # Row y is fitted to label y's training digits encoded under y: its mean is their posterior
    # means' average (up to the sampling noise of 8 draws per digit), its covariance their spread.
    modules, _ = export._load("vae", trained_checkpoints)
    vae = nets.Vae()
    vae.load_state_dict(modules["vae"])
    split = load_split()
    for y in (0, 7, nets.NULL_LABEL):
        pick = split.train_y == y if y != nets.NULL_LABEL else np.ones(len(split.train_y), bool)
        with torch.no_grad():
            mu, logvar = vae.encoder(torch.tensor(split.train_x[pick]), torch.full((int(pick.sum()),), y))
        spread = mu.numpy().var(axis=0) + logvar.exp().numpy().mean(axis=0)  # the aggregate posterior's
        np.testing.assert_allclose(prior.mean[y], mu.numpy().mean(axis=0), atol=4 * np.sqrt(spread.max() / pick.sum()))
        cov = prior.scale_tril[y] @ prior.scale_tril[y].T
        np.testing.assert_allclose(np.diag(cov), spread, rtol=0.2)
    # --vae-prior standard: N(0, I), no prior file, and the card's command says so.
    export.export_vae(tmp_path, trained_checkpoints, prior="standard")
    card = load_card(tmp_path / "vae")
    assert card.prior is None and not (tmp_path / "vae" / export.PRIOR_FILE).exists()
    assert "genserve export vae --vae-prior standard &&" in card.provenance.command
    assert np.array_equal(load_model(tmp_path / "vae", device="cpu").prior.scale_tril[3], np.eye(16))  # type: ignore[union-attr]


@pytest.mark.parametrize(("family", "arch"), [("vae", "base"), ("diffusion", "res")])
def test_the_command_line_refuses_a_shape_the_family_does_not_have(family: str, arch: str) -> None:
    from training.cli import build_parser

    args = build_parser().parse_args(["train", family, "--arch", arch, "--steps", "1"])
    with pytest.raises(SystemExit, match=f"--arch {arch}: {family} takes"):
        args.func(args)


def test_classifier_export_has_logits_and_features(trained_checkpoints: Path, tmp_path: Path) -> None:
    export.export_classifier(tmp_path, trained_checkpoints)
    from service.runtime import OnnxModel

    m = OnnxModel(tmp_path / export.EVAL_DIR / "classifier.onnx", device="cpu")
    assert m.outputs == ["logits", "features"]


def test_distilled_export_is_a_step_conditioned_served_model(trained_checkpoints: Path, tmp_path: Path) -> None:
    from training.distill import distill

    cfg = default_config("distilled", steps=1, batch_size=4, checkpoint_dir=tmp_path / "ck")
    distill(cfg, trained_checkpoints / "diffusion.safetensors", pool_size=4)
    err = export.export_distilled(tmp_path, tmp_path / "ck")
    assert err < export.PARITY_ATOL
    model = load_model(tmp_path / "distilled", device="cpu")
    assert model.card.sampling is not None and model.card.sampling.steps == [1, 2, 4]
    assert model.card.onnx.inputs["num_steps"] in model.onnx.inputs
    assert "Teacher: " in model.card.provenance.notes
    # The command says what the student learnt from, as typed: the teacher and the pool's size.
    teacher = trained_checkpoints / "diffusion.safetensors"
    assert model.card.provenance.command.startswith(f"genserve distill --teacher {teacher} --steps 1 --batch-size 4")
    assert "--pool-size 4 (reached step 1) && genserve export distilled" in model.card.provenance.command


def test_a_narrow_students_card_types_its_shape(trained_checkpoints: Path, tmp_path: Path) -> None:
    from training.distill import distill

    cfg = default_config("distilled", steps=1, batch_size=4, checkpoint_dir=tmp_path / "ck")
    distill(cfg, trained_checkpoints / "diffusion.safetensors", pool_size=4, arch="narrow")
    assert export.export_distilled(tmp_path, tmp_path / "ck") < export.PARITY_ATOL
    model = load_model(tmp_path / "distilled", device="cpu")
    teacher = trained_checkpoints / "diffusion.safetensors"
    assert model.card.provenance.command.startswith(f"genserve distill --teacher {teacher} --arch narrow --steps 1")
    assert "The student's UNet is `narrow`" in model.card.provenance.notes


def test_the_evaluation_reads_the_classifiers_spatial_map_from_its_graph(tmp_path: Path) -> None:
    """sFID's features: the first 7 channels of the map the classifier flattens, taken from the
    exported file by adding that tensor to the graph's outputs, equal to torch's own."""
    import numpy as np

    from training.evaluate import FeatureNet

    torch.manual_seed(0)
    clf = nets.DigitClassifier().eval()
    path = tmp_path / "classifier.onnx"
    export.export_onnx(clf, export._image_inputs(2), path, ["image"], ["logits", "features"])
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        flattened = next(i for i, m in enumerate(clf.body) if isinstance(m, torch.nn.Flatten))
        maps = clf.body[:flattened](x)
        logits, feats = clf(x)
    got = FeatureNet(path, 1).embed(x.numpy())
    assert got.spatial is not None and got.spatial.shape == (5, 7 * 7 * 7)
    np.testing.assert_allclose(got.spatial, maps[:, :7].flatten(1).numpy(), atol=1e-5)
    np.testing.assert_allclose(got.features, feats.numpy(), atol=1e-5)
    assert (got.predicted == logits.argmax(1).numpy()).all()


def test_eval_writes_the_standard_measurement_to_cards_and_another_n_to_its_own_report(
    trained_checkpoints: Path, tmp_path: Path
) -> None:
    import json

    from training.evaluate import run_eval

    export.export_classifier(tmp_path, trained_checkpoints)
    export.EXPORTERS["gan"](tmp_path, trained_checkpoints)
    run_eval(tmp_path, ["gan"], 1, ["default"], tmp_path / "docs" / "quality.md", bootstrap=20)
    card = json.loads((tmp_path / "gan" / "model.json").read_text())
    default = card["quality"]["default"]
    assert default["n"] == 1000 and default["fid_lo"] < default["fid"] < default["fid_hi"]
    assert default["sfid_lo"] < default["sfid"] < default["sfid_hi"]
    report = (tmp_path / "docs" / "quality.md").read_text()
    assert "| gan | default | 1,000 |" in report and "How wide the intervals are, measured" in report

    run_eval(tmp_path, ["gan"], 1, ["default"], tmp_path / "docs" / "quality-n200.md", n=200, bootstrap=20)
    assert json.loads((tmp_path / "gan" / "model.json").read_text()) == card, "another N leaves the cards alone"
    other = json.loads((tmp_path / "docs" / "quality-n200.json").read_text())
    assert other["n"] == 200 and other["gan"]["default"]["n"] == 200 and other["floor"]["n"] == 200
    assert "| gan | default | 200 |" in (tmp_path / "docs" / "quality-n200.md").read_text()
    # Measuring another model at that N later keeps the gan's rows; a different N starts afresh.
    export.EXPORTERS["vae"](tmp_path, trained_checkpoints)
    run_eval(tmp_path, ["vae"], 1, ["default"], tmp_path / "docs" / "quality-n200.md", n=200, bootstrap=0)
    both = json.loads((tmp_path / "docs" / "quality-n200.json").read_text())
    assert both["gan"] == other["gan"] and both["vae"]["default"]["n"] == 200
    assert "| gan | default | 200 |" in (tmp_path / "docs" / "quality-n200.md").read_text()
    run_eval(tmp_path, ["vae"], 1, ["default"], tmp_path / "docs" / "quality-n200.md", n=100, bootstrap=0)
    assert set(json.loads((tmp_path / "docs" / "quality-n200.json").read_text())) == {"n", "floor", "vae"}
