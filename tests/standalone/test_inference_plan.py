"""standalone/inference_plan.py: rows, range, batches, samples, seeds and names as the reference's inference
script plans them (expected values restated from its rules here)."""

from __future__ import annotations

import math
import random

import pytest

from comfyui_opensora.standalone import inference_plan as ip


def rows(n: int, named: bool = False) -> list[ip.PromptRow]:
    return [ip.PromptRow(index=i, text=f"prompt {i}.", name=f"clip{i}" if named else "") for i in range(n)]


def test_names_follow_the_reference():
    row = ip.PromptRow(index=3, text="..a cat on a mat..")
    assert ip.sample_name(row, 0, "prompt") == "prompt_0003"
    assert ip.sample_name(row, 2, "prompt") == "prompt_0003_2"
    assert ip.sample_name(row, 0, "prompt", save_prefix="run1_") == "run1_prompt_0003"
    named = ip.PromptRow(index=3, text="x", name="boat")
    assert ip.sample_name(named, 0, "table", save_prefix="p_") == "p_boat"
    assert ip.sample_name(named, 1, "table") == "boat_1"
    assert ip.sample_name(row, 0, "prompt", prompt_as_path=True) == "a cat on a mat-0"
    assert ip.sample_name(row, 3, "prompt", prompt_as_path=True) == "a cat on a mat-3"
    assert ip.sub_dir(129, "256px") == "video_256px" and ip.sub_dir(1, "768px") == "image_768px"


def reference_fps(fps: float) -> str:
    """The text dataset's fps: below 16 unchanged, else floor(fps / ceil(fps / 16))."""
    new = fps if fps < 16 else math.floor(fps / math.ceil(fps / 16))
    return f" {int(new)} FPS."


@pytest.mark.parametrize("fps", [8, 12, 15, 16, 24, 25, 30, 50, 60, 120])
def test_fps_column_is_mapped_below_16(fps):
    assert ip.fps_suffix(fps) == reference_fps(fps)
    assert ip.PromptRow(index=0, text="a cat", fps=fps).prompt == "a cat" + reference_fps(fps)


def test_no_fps_adds_nothing():
    assert ip.fps_suffix(None) == "" and ip.PromptRow(index=0, text="a cat").prompt == "a cat"


def test_row_range():
    table = rows(6)
    assert [r.index for r in ip.select_rows(table)] == list(range(6))
    assert [r.index for r in ip.select_rows(table, 2)] == [2, 3, 4, 5]
    assert [r.index for r in ip.select_rows(table, 1, 3)] == [1, 2]
    assert [r.index for r in ip.select_rows(table, 1, num_samples=2)] == [1, 2]
    with pytest.raises(ValueError):
        ip.select_rows(table, -1)


def test_plan_with_a_seed_offsets_each_sample_and_batches_rows():
    plan = ip.plan(rows(3), "prompt", batch_size=2, num_sample=2, seed=1234)
    assert [(g.sample, [r.index for r in g.rows], g.seed) for g in plan] == [
        (0, [0, 1], 1234), (0, [2], 1234), (1, [0, 1], 1235), (1, [2], 1235)]
    assert plan[2].names == ("prompt_0000_1", "prompt_0001_1")


def test_plan_without_a_seed_draws_per_generation_as_the_script():
    plan = ip.plan(rows(2), "prompt", batch_size=1, num_sample=2, seed=None, global_seed=42)
    rng = random.Random(42)
    assert [g.seed for g in plan] == [rng.randint(0, 2**32 - 1) for _ in range(4)]
    assert plan[0].seed == 2746317213


def test_seed_zero_is_not_offset():
    """The script offsets only a truthy seed; 0 reaches every sample as 0."""
    assert [g.seed for g in ip.plan(rows(1), "p", num_sample=3, seed=0)] == [0, 0, 0]


def test_csv_and_parquet_tables(tmp_path):
    csv_path = tmp_path / "my.prompts.csv"
    csv_path.write_text('text,name,fps\n"a, cat",cat,24\nfox,,\n', encoding="utf-8")
    table, stem = ip.read_prompt_table(csv_path)
    assert stem == "my"  # the reference keeps the part before the first dot
    got = ip.prompt_rows(table, negative="blurry", ref="a.png")
    assert got[0] == ip.PromptRow(index=0, text="a, cat", ref="a.png", neg="blurry", name="cat", fps=24.0)
    assert got[1].fps is None and got[1].name == ""

    pyarrow = pytest.importorskip("pyarrow", reason="pyarrow reads parquet prompt tables (optional dependency)")
    import pyarrow.parquet as parquet

    parquet.write_table(pyarrow.table({"text": ["a", "b"], "fps": [30.0, float("nan")]}), tmp_path / "t.parquet")
    table, stem = ip.read_prompt_table(tmp_path / "t.parquet")
    assert stem == "t" and [r.prompt for r in ip.prompt_rows(table)] == ["a 15 FPS.", "b"]
    (tmp_path / "bad.csv").write_text("prompt\nx\n")
    with pytest.raises(ValueError, match="'text' column"):
        ip.read_prompt_table(tmp_path / "bad.csv")
