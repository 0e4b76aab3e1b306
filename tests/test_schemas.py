import pytest
from pydantic import ValidationError

from app.schemas import MLPSpec, RecommendationSpec


def test_default_spec_is_the_papers_network():
    spec = RecommendationSpec()
    assert isinstance(spec.model, MLPSpec)
    assert spec.model.hidden == [784]
    assert spec.model.activation == "tanh"
    assert spec.model.hidden_bias is False
    assert spec.model.init.scheme == "edge" and spec.model.init.J == 0.5


def test_unknown_field_is_named():
    with pytest.raises(ValidationError) as exc:
        RecommendationSpec.model_validate({"model": {"type": "mlp", "hiden": [10]}})
    assert "hiden" in str(exc.value)
