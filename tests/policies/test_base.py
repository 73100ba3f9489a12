"""The policy interface knows no implementation: policies register themselves, and ``as_policy`` picks one."""

import pytest

from b2lib.policies import Policy, as_policy, register_policy
from b2lib.policies.base import _POLICIES
from b2lib.policies.ddim import DDIMPolicy
from b2lib.policies.flow import FlowSDEPolicy


def test_both_stock_policies_are_registered_the_fallback_last():
    classes = [cls for _, cls in _POLICIES]
    assert FlowSDEPolicy in classes and DDIMPolicy in classes
    assert _POLICIES[-1] == (None, DDIMPolicy)


def test_as_policy_picks_by_pipeline_and_a_new_policy_is_one_registration(tiny_pipe, monkeypatch):
    assert isinstance(as_policy(tiny_pipe), DDIMPolicy)  # a UNet pipeline: the fallback
    policy = as_policy(tiny_pipe)
    assert as_policy(policy) is policy  # a policy as it is
    monkeypatch.setattr("b2lib.policies.base._POLICIES", list(_POLICIES))

    @register_policy(lambda pipe: getattr(pipe, "marker", False))
    class Marked(DDIMPolicy):
        pass

    tiny_pipe.marker = True
    assert type(as_policy(tiny_pipe)) is Marked
    assert issubclass(Marked, Policy)


def test_nothing_registered_names_the_fix(monkeypatch):
    monkeypatch.setattr("b2lib.policies.base._POLICIES", [])
    with pytest.raises(TypeError, match="import b2lib.policies"):
        as_policy(object())
