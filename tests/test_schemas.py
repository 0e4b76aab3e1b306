import pytest
from pydantic import ValidationError

from app.schemas import MLPSpec, RecommendationSpec


def test_default_model_is_the_papers_network():
    spec = RecommendationSpec.model_validate({"model": {}, "dataset": {}})
    assert isinstance(spec.model, MLPSpec)
    assert spec.model.hidden == [784]
    assert spec.model.activation == "tanh"
    assert spec.model.hidden_bias is False
    assert spec.model.init.scheme == "edge" and spec.model.init.J == 0.5


def test_model_and_dataset_are_required():
    with pytest.raises(ValidationError) as exc:
        RecommendationSpec.model_validate({})
    assert [(e["loc"], e["type"]) for e in exc.value.errors()] == [
        (("model",), "missing"),
        (("dataset",), "missing"),
    ]


def test_unknown_field_is_named():
    with pytest.raises(ValidationError) as exc:
        RecommendationSpec.model_validate({"model": {"type": "mlp", "hiden": [10]}, "dataset": {}})
    assert "hiden" in str(exc.value)
