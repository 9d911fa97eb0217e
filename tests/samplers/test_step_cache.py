"""Step caching (samplers/step_cache.py): exactly uncached at threshold 0, the skip schedule it follows,
and the guidance branches reused together. Runs the golden t2v case's tiny model (12 steps)."""

from __future__ import annotations

import pytest
import torch

from denoise_cases import CASE_GEOMETRY, case_noise, guidance_of, load_denoise_case, text_inputs, timesteps_of
from comfyui_opensora.samplers import denoisers
from comfyui_opensora.samplers.step_cache import StepCache, StepCacheSettings


@pytest.fixture(scope="module")
def t2v():
    manifest, tensors, model = load_denoise_case("denoise_t2v")
    option = manifest["sampling_option"]["in"]
    prompts = manifest["call"]["args"]["text"]
    args = (case_noise(manifest["record"], tensors), text_inputs(tensors, "", prompts), timesteps_of(option, CASE_GEOMETRY),
            guidance_of(option))
    return model, args


def _sample(model, args, cache: StepCacheSettings | None) -> tuple[torch.Tensor, int]:
    """The final latent and how many model forwards the run made."""
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        extra = {} if cache is None else {"cache": cache}
        final = denoisers.denoise_i2v(model, *args, **extra)
    finally:
        handle.remove()
    return final, len(calls)


def test_threshold_zero_is_exactly_uncached(t2v):
    model, args = t2v
    uncached, uncached_calls = _sample(model, args, None)
    zero, zero_calls = _sample(model, args, StepCacheSettings(threshold=0.0, start=0.0, end=1.0))
    assert torch.equal(zero, uncached) and zero_calls == uncached_calls == 12


def test_large_threshold_skips_every_step_inside_the_window(t2v):
    model, args = t2v
    uncached, _ = _sample(model, args, None)
    # 12 steps, window [0.25, 0.75) -> steps 3..8 may reuse; steps 0-2 and 9-11 run the model.
    cached, calls = _sample(model, args, StepCacheSettings(threshold=1e9, start=0.25, end=0.75))
    assert calls == 6
    assert not torch.equal(cached, uncached) and torch.isfinite(cached).all()


def test_moderate_threshold_deviates_less_than_skipping_everything(t2v):
    model, args = t2v
    uncached, _ = _sample(model, args, None)
    every, every_calls = _sample(model, args, StepCacheSettings(threshold=1e9))
    some, some_calls = _sample(model, args, StepCacheSettings(threshold=0.15))
    assert every_calls <= some_calls <= 12
    assert (some - uncached).abs().max() <= (every - uncached).abs().max()


def _tensor(value: float) -> torch.Tensor:
    return torch.full((1, 4, 2), value)


def test_skip_schedule_follows_the_predicted_output_change():
    cache = StepCache(StepCacheSettings(threshold=0.1, start=0.0, end=1.0), num_steps=10)
    assert cache.lookup(0, _tensor(1.0), ("cond",)) is None  # nothing cached yet
    cache.store(_tensor(1.0), {"cond": _tensor(2.0)})
    assert cache.lookup(1, _tensor(1.01), ("cond",)) is None  # the output/input ratio is not known yet
    cache.store(_tensor(1.1), {"cond": _tensor(2.4)})  # output +20 % for input +10 %: ratio 2
    assert cache.lookup(2, _tensor(1.12), ("cond",))[0].equal(_tensor(2.4))  # predicted 2 x 1.8 % < 10 %
    assert cache.lookup(3, _tensor(1.16), ("cond",)) is None  # predicted 2 x 5.5 % >= 10 %
    assert cache.skipped == [2]


def test_branches_are_reused_only_together_and_only_inside_the_window():
    cache = StepCache(StepCacheSettings(threshold=1.0, start=0.3, end=0.6), num_steps=10)
    cache.store(_tensor(1.0), {"cond": _tensor(2.0)})
    cache.store(_tensor(1.1), {"cond": _tensor(2.1), "uncond": _tensor(3.0)})
    assert cache.lookup(2, _tensor(1.1), ("cond",)) is None  # before the window
    assert cache.lookup(6, _tensor(1.1), ("cond",)) is None  # after it
    both = cache.lookup(3, _tensor(1.1), ("cond", "uncond"))
    assert [t[0, 0, 0].item() for t in both] == pytest.approx([2.1, 3.0])
    cache.store(_tensor(1.2), {"cond": _tensor(2.2)})  # a step that ran only the conditional branch
    assert cache.lookup(4, _tensor(1.2), ("cond", "uncond")) is None  # no uncond from the same model state
    assert cache.lookup(4, _tensor(1.2), ("cond",)) is not None


def test_settings_are_checked():
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        StepCacheSettings(threshold=-0.1)
    with pytest.raises(ValueError, match="0 <= start <= end <= 1"):
        StepCacheSettings(threshold=0.1, start=0.8, end=0.5)
