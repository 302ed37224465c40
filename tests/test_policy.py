"""LayerPolicy: the one set of rules every policy reader (reparameterize, the BERT builder) follows."""

import types

import pytest

import tfreparam as tr
from tfreparam.policy import LayerPolicy


def _layers(*names):
    return [types.SimpleNamespace(name=name) for name in names]


LAYERS = _layers("layer_0/attention/query", "layer_0/attention/value", "layer_0/ffn/output", "pooler")


def _specs(policy, layers=LAYERS, argument="policy"):
    chosen = LayerPolicy(policy, argument=argument)
    return chosen, [chosen.spec_for(layer) for layer in layers]


def test_a_spec_applies_to_every_layer():
    spec = tr.LowRank(rank=2)
    policy, specs = _specs(spec)
    assert specs == [spec] * 4
    policy.check_all_matched()


def test_patterns_full_match_and_the_first_match_wins():
    low, kron = tr.LowRank(rank=2), tr.Kronecker()
    _, specs = _specs({r".*/attention/query": kron, r"layer_\d+/.*": low, "pool": low})
    assert specs == [kron, low, low, None]  # "pool" does not full-match "pooler"


def test_keep_and_none_keep_a_layer_and_count_as_matches():
    low = tr.LowRank(rank=2)
    policy, specs = _specs({r".*/value": tr.Keep(), "pooler": None, ".*": low})
    assert specs == [low, None, low, None]
    policy.check_all_matched()


def test_a_callable_gets_the_layer():
    low = tr.LowRank(rank=2)
    _, specs = _specs(lambda layer: low if layer.name.endswith("query") else tr.Keep())
    assert specs == [low, None, None, None]


def test_a_pattern_matching_nothing_is_an_error_naming_the_candidates():
    policy, _ = _specs({r"layer_\d+/ffn": tr.LowRank(rank=2)}, argument="layer_policy")
    assert policy.unmatched_patterns() == [r"layer_\d+/ffn"]
    with pytest.raises(ValueError, match=r"layer_policy: pattern 'layer_\\\\d\+/ffn' matches no layer \(patterns must "
                                         r"match the whole name\)\. The projection layers are: layer_0/attention/query, "):
        policy.check_all_matched()
    with pytest.raises(ValueError, match=r"matches no layer .* It is a typo\. The heads are"):
        policy.check_all_matched("heads", also=lambda pattern: "It is a typo.")


@pytest.mark.parametrize("policy, message", [
    ({"(": tr.LowRank(rank=2)}, r"layer_policy: '\(' is not a valid regular expression"),
    ({3: tr.LowRank(rank=2)}, r"layer_policy: keys must be layer-name regexes \(str\); got 3"),
    ({"a": "low_rank"}, r"layer_policy: entry 'a' maps to 'low_rank', which is not a spec; use tfreparam.LowRank"),
    (42, r"layer_policy must be a spec .* got int"),
])
def test_invalid_policies_name_the_argument(policy, message):
    with pytest.raises(ValueError, match=message):
        LayerPolicy(policy, argument="layer_policy")


def test_a_callable_returning_something_else_is_an_error():
    policy = LayerPolicy(lambda layer: "low_rank", argument="layer_policy")
    with pytest.raises(ValueError, match=r"layer_policy returned 'low_rank' for 'pooler', which is not a spec"):
        policy.spec_for(LAYERS[3])


def test_none_is_an_empty_policy():
    policy, specs = _specs(None)
    assert policy.is_empty and specs == [None] * 4
    policy.check_all_matched()
    assert LayerPolicy({}).is_empty
