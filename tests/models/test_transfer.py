"""Fine-tuning: ``train.init_from`` loads by name and shape, re-initialises the head when the
labels differ and says what it did; the encoder can be frozen for the first epochs."""

from types import SimpleNamespace

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.models.callbacks import EncoderFreezing
from pipeline.models.model_dir import ModelDescription, load_state_dict, save_fold
from pipeline.models.networks import encoder_parameter_names
from pipeline.models.transfer import initialise_from
from pipeline.preprocess.plans import ChannelNormalization, Plans
from tests.conftest import TINY_NETWORK

ORGAN_AND_LESION = {0: "background", 1: "organ", 2: "lesion"}


def description(labels: dict[int, str]) -> ModelDescription:
    plans = Plans(
        channel_names=["CT"],
        labels=labels,
        target_spacing=(2.0, 2.0, 4.0),
        normalization=[ChannelNormalization("ct", -100.0, 200.0, 50.0, 40.0)],
        patch_size=[32, 32, 16],
        batch_size=2,
    )
    return ModelDescription(TINY_NETWORK, plans, patch_size=[32, 32, 16])


@pytest.fixture
def source_model(tmp_path):
    torch.manual_seed(1)
    source = description(ORGAN_AND_LESION)
    save_fold(tmp_path / "source/fold_0", source, source.build())
    return tmp_path / "source"


def assert_loaded_from(network, source_state, names):
    state = network.state_dict()
    for name in names:
        torch.testing.assert_close(state[name], source_state[name])


def test_same_labels_load_every_tensor(source_model):
    torch.manual_seed(2)
    network = description(ORGAN_AND_LESION).build()
    report = initialise_from(network, source_model, ORGAN_AND_LESION)
    assert report["not_loaded"] == {} and report["unused_in_source"] == []
    assert len(report["loaded"]) == len(network.state_dict())
    assert_loaded_from(network, load_state_dict(source_model / "fold_0/weights.pt"), report["loaded"])


def test_another_label_count_reinitialises_the_head_only(source_model):
    organ_only = {0: "background", 1: "organ"}
    torch.manual_seed(2)
    network = description(organ_only).build()
    fresh = {k: v.clone() for k, v in network.state_dict().items()}
    report = initialise_from(network, source_model, organ_only)

    head = set(report["not_loaded"])
    assert head and all("segmentation head re-initialised" in why for why in report["not_loaded"].values())
    for name in head:  # kept their fresh initialisation, with two output channels
        torch.testing.assert_close(network.state_dict()[name], fresh[name])
    assert_loaded_from(network, load_state_dict(source_model / "fold_0/weights.pt"), report["loaded"])
    assert len(report["loaded"]) + len(head) == len(fresh)


def test_same_label_count_with_other_names_does_not_reuse_the_head(source_model):
    kidney = {0: "background", 1: "kidney", 2: "cyst"}
    network = description(kidney).build()
    report = initialise_from(network, source_model, kidney)
    assert report["not_loaded"], "a head trained for organ/lesion must not start a kidney/cyst model"
    assert len(report["loaded"]) + len(report["not_loaded"]) == len(network.state_dict())


def test_a_checkpoint_file_loads_by_name_too(source_model):
    network = description(ORGAN_AND_LESION).build()
    report = initialise_from(network, source_model / "fold_0/weights.pt", ORGAN_AND_LESION)
    assert report["not_loaded"] == {}


def test_unusable_sources_are_named(tmp_path, source_model):
    network = description(ORGAN_AND_LESION).build()
    with pytest.raises(ConfigError, match="train.init_from: .*missing.pt does not exist"):
        initialise_from(network, tmp_path / "missing.pt", ORGAN_AND_LESION)
    torch.save({"other.weight": torch.zeros(3)}, tmp_path / "unrelated.pt")
    with pytest.raises(ConfigError, match="no tensor of .*unrelated.pt fits this network"):
        initialise_from(network, tmp_path / "unrelated.pt", ORGAN_AND_LESION)


def test_encoder_is_frozen_for_the_first_epochs_only():
    network = description(ORGAN_AND_LESION).build()
    encoder = encoder_parameter_names(network)
    freezing = EncoderFreezing(encoder, epochs=2)
    module = SimpleNamespace(network=network)
    for epoch, frozen in [(0, True), (1, True), (2, False)]:
        freezing.on_train_epoch_start(SimpleNamespace(current_epoch=epoch), module)
        for name, parameter in network.named_parameters():
            assert parameter.requires_grad == (not frozen or name not in encoder), (epoch, name)
