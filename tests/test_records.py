"""The positional constructors of the frozen dataclass rows build what the generated ``__init__`` builds."""

from dataclasses import FrozenInstanceError, fields

import pytest

from layerlens_opt.allocation import LayerChoice, new_choice
from layerlens_opt.manifest import Layer, _new_layer
from layerlens_opt.problem import LayerInfo, new_info
from layerlens_opt.records import positional

ROWS = [
    (LayerChoice, new_choice, ("l0", "mlp", 3, "lora", 8, 12_288, 0.25, 0.5, 768, 768, None)),
    (LayerChoice, new_choice, ("l1", "attention", None, "none", 0, 0, 0.0, 0.0, None, None, "g")),
    (LayerInfo, new_info, ("l2", "mlp", 1, 16, 32, 0.75, ("none", "lora"), (), (), None)),
    (Layer, _new_layer, ("l3", "attention", 64, 64, {"fisher": 1.0}, 2, None, {}, None)),
    (Layer, _new_layer, ("l4", "mlp", 8, 8, {"fisher": 0.0}, None, ("lora",), {"lora": ((4, 0.5),)}, "g")),
]


@pytest.mark.parametrize("cls,make,values", ROWS)
def test_a_positional_row_equals_the_generated_constructors(cls, make, values):
    fast, slow = make(*values), cls(*values)
    assert type(fast) is cls
    assert fast == slow and repr(fast) == repr(slow)
    if not any(isinstance(v, dict) for v in values):  # (a Layer's metrics dict makes it unhashable either way)
        assert hash(fast) == hash(slow)
    assert [getattr(fast, f.name) for f in fields(cls)] == list(values)
    with pytest.raises(FrozenInstanceError):
        fast.name = "changed"


def test_every_field_must_be_given():
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'group'"):
        new_choice("l0", "mlp", 3, "lora", 8, 12_288, 0.25, 0.5, 768, 768)  # group left out: defaults are not applied
    with pytest.raises(TypeError, match="takes 11 positional arguments but 12 were given"):
        new_choice("l0", "mlp", 3, "lora", 8, 12_288, 0.25, 0.5, 768, 768, None, "extra")


def test_a_class_with_a_post_init_is_refused():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Checked:
        x: int

        def __post_init__(self):
            if self.x < 0:
                raise ValueError("negative")

    with pytest.raises(TypeError, match="__post_init__"):
        positional(Checked)
