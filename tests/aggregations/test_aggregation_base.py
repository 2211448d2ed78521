"""The Aggregation contract, Pipeline dim checks, specs, and discovery through entry points."""

import json

import numpy as np
import pytest

from attviz import aggregations, registry
from attviz.aggregations import Aggregation, DimsError, Pipeline

BUILTINS = {
    "mean", "max", "min", "median", "std", "range", "select",
    "attention_received", "attention_from", "diagonal", "entropy", "head_entropy",
    "rollout", "flow", "drop_special", "merge_words", "head_summary",
    "attviz_mean", "attviz_std", "attviz_max", "attviz_min", "attviz_max_min", "attviz_entropy",
}  # fmt: skip
LEGACY = {name for name in BUILTINS if name.startswith("attviz_")}


def test_every_builtin_is_discovered_through_its_entry_point():
    found = registry.plugins("aggregations")
    assert set(found) >= BUILTINS
    assert not registry.problems("aggregations")
    for name in BUILTINS:
        cls = found[name]
        assert issubclass(cls, Aggregation)
        assert cls.description and cls.reference, name
        assert cls.__doc__, name
        instance = aggregations.get(name)
        assert instance.id == name  # the entry-point name, not param's auto name
        assert instance.name != name
    assert set(aggregations.available()) >= BUILTINS


def test_unknown_name_is_a_clear_error():
    with pytest.raises(KeyError, match="no aggregations plugin named 'nope'"):
        aggregations.get("nope")


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_pure_and_labelled(small, make_attention, name):
    from attviz.corpus import token_frame, vector_array

    if name in LEGACY:
        data = vector_array(np.array([[0.1, 0.2], [0.3, 0.4]]), token_frame(["a", "b"]), ["0", "1"])
    else:
        data = small
    before = data.copy(deep=True)
    agg = aggregations.get(name)
    out = agg(data)
    assert data.identical(before)  # input untouched, attrs included
    assert out.name and out.attrs["long_name"] and out.attrs["units"]
    assert json.loads(out.attrs["aggregation"])[-1]["aggregation"] == name
    assert out.dims == agg.output_dims(data.dims)  # declared dims match what comes out
    if name != "select":  # selection keeps the stored dtype; everything else computes in float32+
        assert out.dtype in (np.float32, np.float64)


def test_pipeline_composes_and_records_its_steps(small):
    # mean over heads of TWO_BY_TWO: L0 [[.75,.25],[.25,.75]], L1 [[.5,.5],[.75,.25]]
    # attention received (column means): L0 [.5, .5], L1 [(.5+.75)/2, (.5+.25)/2] = [.625, .375]
    pipeline = Pipeline([aggregations.get("mean"), aggregations.get("attention_received")])
    assert pipeline.output_dims(small.dims) == ("layer", "token")
    out = pipeline(small)
    assert out.dims == ("layer", "token")
    np.testing.assert_allclose(out.values, [[0.5, 0.5], [0.625, 0.375]])
    steps = json.loads(out.attrs["aggregation"])
    assert steps == [{"aggregation": "mean", "over": "head"}, {"aggregation": "attention_received"}]
    rebuilt = aggregations.from_spec(out.attrs["aggregation"])
    assert isinstance(rebuilt, Pipeline)
    np.testing.assert_allclose(rebuilt(small).values, out.values)


def test_pipeline_with_wrong_dims_fails_at_construction():
    with pytest.raises(DimsError) as error:
        Pipeline([aggregations.get("attention_received"), aggregations.get("rollout")])
    assert str(error.value) == (
        "step 2 (rollout) needs dims (layer, head, query, key) "
        "but step 1 (attention_received) outputs (layer, head, token)"
    )
    message = r"step 3 \(mean\) needs dims \(layer\) but step 2 \(head_entropy\) outputs \(head\)"
    with pytest.raises(DimsError, match=message):
        Pipeline(
            [
                aggregations.get("mean", over="layer"),
                aggregations.get("head_entropy"),
                aggregations.get("mean", over="layer"),
            ]
        )


def test_pipeline_checks_the_real_input(small):
    pipeline = Pipeline([aggregations.get("mean"), aggregations.get("entropy")])
    with pytest.raises(DimsError, match=r"step 1 \(mean\) needs dims \(head\) but the input has \(layer, query, key\)"):
        pipeline(small.isel(head=0))


def test_legacy_pipelines_start_from_vectors():
    pipeline = Pipeline([aggregations.get("drop_special"), aggregations.get("attviz_std")])
    assert pipeline.flow(("vector", "token"))[-1] == ("token",)
    legacy = Pipeline([aggregations.get("attviz_mean")])
    assert legacy.start_dims() == ("vector", "token")


def test_single_aggregation_dim_error_names_everything(small):
    message = r"'rollout' needs dims \(layer, head, query, key\) but got \(layer, head, token\)"
    with pytest.raises(DimsError, match=message):
        aggregations.get("rollout")(aggregations.get("diagonal")(small))


def test_changing_steps_revalidates():
    mean = aggregations.get("mean")
    pipeline = Pipeline([mean])
    with pytest.raises(DimsError, match=r"step 2 \(diagonal\) needs dims \(query, key\)"):
        pipeline.steps = [aggregations.get("diagonal"), aggregations.get("diagonal")]
    assert pipeline.steps == [mean]  # the broken change was undone


def test_parameters_have_widget_bounds():
    rollout = aggregations.get("rollout")
    assert rollout.param["residual"].bounds == (0.0, 1.0) and rollout.param["residual"].step
    assert aggregations.get("attention_from").param["query"].softbounds == (-1, 127)


def test_validator_rejects_non_aggregations():
    from attviz.aggregations.base import _validate_aggregation

    with pytest.raises(TypeError, match="not a subclass"):
        _validate_aggregation(object)

    class NoApply(Aggregation):
        description = "x"

    with pytest.raises(TypeError, match="does not implement apply"):
        _validate_aggregation(NoApply)
