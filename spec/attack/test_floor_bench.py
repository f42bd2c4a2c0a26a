"""The arithmetic of bench/attack/floor.py's verdicts: a training floor k·(F+B_in) + natural meets a target T× natural
exactly when (F+B_in)/natural ≤ (T − 1)/k, and a free stem input-gradient only lowers the floor."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.attack.floor import TARGET_VS_NATURAL, TRAIN_STEPS, floors, natural_targets

ms_values = st.floats(1.0, 1000.0, allow_nan=False)


@pytest.mark.parametrize("name", sorted(TARGET_VS_NATURAL))
@given(f=ms_values, fb_extra=ms_values, nat=ms_values, stem_share=st.floats(0.0, 1.0))
def test_the_reachable_verdict_is_the_needed_step_ratio(name, f, fb_extra, nat, stem_share):
    fb = f + fb_extra
    ms = {"forward": f, "forward+input-backward": fb, "natural step": nat, "stem input-grad": stem_share * fb_extra}
    floor_ms, formula = floors(ms, steps=10)[name]
    info = natural_targets(ms, name, floor_ms)
    k = TRAIN_STEPS[name]
    assert floor_ms == pytest.approx(k * fb + nat), f"{name}: floor {floor_ms} from {formula} with {ms}"
    assert info["floor_vs_natural"] == pytest.approx(1 + k * fb / nat)
    fits = info["fb_vs_natural"] <= info["fb_vs_natural_needed"]
    near = abs(info["fb_vs_natural"] - info["fb_vs_natural_needed"]) < 1e-9  # rounding at the boundary either way
    assert near or info["target_reachable"] == fits, f"{name}: verdict {info['target_reachable']} with {info}"
    assert info["floor_vs_natural_free_stem"] <= info["floor_vs_natural"] + 1e-12, info
