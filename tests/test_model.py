import keras
import pytest
from keras import layers

from report.errors import UserError
from report.model import ModelMetadata, build_classifier


def plain_model(channels: int = 3, units: int = 3) -> keras.Model:
    return keras.Sequential(
        [keras.Input((32, 40, channels)), layers.Conv2D(2, 3), layers.Flatten(),
         layers.Dense(units, activation="softmax")]
    )


def test_metadata_round_trips_through_the_mlmodel_block():
    metadata = ModelMetadata(("A", "B", "C"), (32, 40), "rgb", 1 / 255, "conv")
    again = ModelMetadata.from_mlflow(metadata.to_mlflow(), plain_model())
    assert again == metadata and again.assumed == ()


def test_missing_metadata_falls_back_to_the_model_and_says_so():
    metadata = ModelMetadata.from_mlflow(None, plain_model(channels=1, units=4))
    assert metadata.class_names == ("class_0", "class_1", "class_2", "class_3")
    assert metadata.image_size == (32, 40)
    assert metadata.color == "grayscale" and metadata.scale == pytest.approx(1 / 255)
    assert len(metadata.assumed) == 4
    assert any("class_0" in sentence for sentence in metadata.assumed)


def test_class_names_must_match_the_outputs():
    with pytest.raises(UserError, match="2 class names but the model has 3 output"):
        ModelMetadata.from_mlflow({"class_names": ["a", "b"]}, plain_model())


def test_classifier_nests_the_backbone_under_the_tutorial_head():
    model = build_classifier("small-cnn", 3, (64, 64))
    names = [type(layer).__name__ for layer in model.layers]
    assert names == ["Functional", "AveragePooling2D", "Flatten", "Dense", "Dropout", "Dense"]
    assert model.layers[-1].activation.__name__ == "softmax"
    assert model.output_shape == (None, 3)


def test_unknown_backbone_is_a_user_error():
    with pytest.raises(UserError, match="choose one of small-cnn"):
        build_classifier("alexnet", 3, (64, 64))


def test_one_sigmoid_unit_is_a_binary_model_with_two_classes():
    binary = plain_model(units=1)
    assert ModelMetadata.from_mlflow(None, binary).class_names == ("class_0", "class_1")
    named = ModelMetadata.from_mlflow({"class_names": ["PNEUMONIA"]}, binary)
    assert named.class_names == ("not PNEUMONIA", "PNEUMONIA")
    pair = ModelMetadata.from_mlflow({"class_names": ["NORMAL", "PNEUMONIA"]}, binary)
    assert pair.class_names == ("NORMAL", "PNEUMONIA")
