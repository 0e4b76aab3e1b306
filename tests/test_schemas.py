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


def test_the_readme_spec_example_is_a_valid_spec() -> None:
    import re
    from pathlib import Path

    import yaml

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## The spec", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    document = yaml.safe_load(block.group(1))
    spec = RecommendationSpec.model_validate(document)
    assert spec.model.type == "mlp" and spec.dataset.name == "fashion-mnist"
    assert spec.budget.epochs == 20 and spec.optimizer.learning_rate is None
    # Stumble 15: every field a user can set is documented there, so the block cannot go stale.
    assert set(document) == set(RecommendationSpec.model_fields)
    for name in ("optimizer", "budget"):
        assert set(document[name]) == set(type(getattr(spec, name)).model_fields), name
