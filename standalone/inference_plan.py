"""The samples of a command-line run, planned as Open-Sora's ``scripts/diffusion/inference.py`` plans them.

Plain Python (no torch, no ComfyUI): prompt tables (CSV or parquet), the row range, batches, repeated
samples with their seeds, the fps column and output names. The command line turns each planned
generation into one workflow run.

What the reference does, in our words:
- A prompt table has a ``text`` column and optional ``ref``, ``neg``, ``name`` and ``fps`` columns; a
  ``--prompt`` is a one-row table named ``prompt``. Rows ``start_index:end_index`` are used
  (``end_index`` defaults to ``start_index + num_samples``), ``batch_size`` rows at a time.
- An ``fps`` value is brought below 16 (every ``ceil(fps / 16)``-th frame: 24 -> 12) and written into the
  prompt as ``" <fps> FPS."``, which then stops the usual fps suffix.
- The whole table is generated ``num_sample`` times. Sample k uses seed ``seed + k`` when a sampling
  seed is set (0 counts as unset for this offset, so it stays 0); without one every generation draws
  ``random.randint(0, 2**32 - 1)`` from Python's ``random`` seeded with the global seed (42).
- A sample is named ``<save_prefix><name>`` when the table has names, else
  ``<save_prefix><table file stem>_<row:04d>`` (``prompt_0000``); sample k > 0 adds ``_<k>``. With
  ``prompt_as_path`` the name is ``<prompt without leading/trailing dots>-<k>``. Files go to
  ``video_<resolution>/`` (``image_<resolution>/`` for one frame) under the output folder.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..samplers.seeds import OPEN_SORA_GLOBAL_SEED, open_sora_seed_draws

FPS_MAX = 16  # the reference's text dataset maps table fps values below this
PROMPT_TABLE_NAME = "prompt"  # a --prompt run is a one-row table of this name
TABLE_COLUMNS = ("text", "ref", "neg", "name", "fps")


@dataclass(frozen=True)
class PromptRow:
    """One row of a prompt table; ``index`` is its row number in the whole table (for names)."""

    index: int
    text: str
    ref: str = ""
    neg: str = ""
    name: str = ""
    fps: float | None = None

    @property
    def prompt(self) -> str:
        """The prompt as the reference's text dataset gives it (with the table's fps, if any)."""
        suffix = fps_suffix(self.fps)
        return self.text + suffix if suffix else self.text


@dataclass(frozen=True)
class Generation:
    """One generation call of the reference: a batch of rows, its sample number and its noise seed."""

    sample: int
    rows: tuple[PromptRow, ...]
    seed: int
    names: tuple[str, ...]


# ------------------------------------------------------------------------------------ prompt tables


def read_prompt_table(path: str | Path) -> tuple[list[dict[str, Any]], str]:
    """The rows of a CSV or parquet prompt table (column name -> value) and its file stem for names."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as parquet
        except ImportError:
            raise ValueError(f"Reading {path} needs pyarrow: python3 -m pip install pyarrow") from None
        rows = parquet.read_table(path).to_pylist()
    else:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    if not rows or "text" not in rows[0]:
        raise ValueError(f"{path} needs a 'text' column (optional: {', '.join(TABLE_COLUMNS[1:])}) and a row.")
    unknown = [column for column in rows[0] if column not in TABLE_COLUMNS]
    if unknown:
        raise ValueError(f"{path}: unknown column(s) {', '.join(map(repr, unknown))}; the columns read are "
                         f"{', '.join(TABLE_COLUMNS)}.")
    return rows, path.name.split(".")[0]


def _fps_value(value: Any) -> float | None:
    if value is None or value == "":
        return None
    number = float(value)
    return None if math.isnan(number) else number


def prompt_rows(table: list[dict[str, Any]], negative: str = "", ref: str = "") -> list[PromptRow]:
    """Rows with the command line's negative prompt and reference where the table gives none."""
    rows = []
    for index, row in enumerate(table):
        rows.append(PromptRow(
            index=index,
            text=str(row.get("text") or ""),
            ref=str(row.get("ref") or ref or ""),
            neg=str(row.get("neg") or negative or ""),
            name=str(row.get("name") or ""),
            fps=_fps_value(row.get("fps")),
        ))
    return rows


def select_rows(rows: Sequence[PromptRow], start_index: int = 0, end_index: int | None = None,
                num_samples: int | None = None) -> list[PromptRow]:
    """Rows ``start_index:end_index``; ``end_index`` defaults to ``start_index + num_samples`` (all)."""
    if start_index < 0:
        raise ValueError(f"--start-index {start_index}: give 0 or more.")
    if end_index is None:
        end_index = start_index + (num_samples if num_samples is not None else len(rows) + 1)
    return list(rows[start_index:end_index])


def fps_suffix(fps: float | None, fps_max: int = FPS_MAX) -> str:
    """``" 12 FPS."`` for a table fps of 24: below ``fps_max`` as is, else ``floor(fps / ceil(fps / max))``."""
    if fps is None:
        return ""
    if fps < fps_max:
        mapped: float = fps
    else:
        mapped = math.floor(fps / math.ceil(fps / fps_max))
    if mapped == 0:
        return ""
    text = str(int(mapped)) if float(mapped).is_integer() else str(mapped)
    return f" {text} FPS."


# ------------------------------------------------------------------------------------------- seeds


def generation_seed(seed: int | None, sample: int, draws: Iterator[int]) -> int:
    """The noise seed of one generation: ``seed + sample`` for a set seed (0 stays 0), else the next draw."""
    if seed is None:
        return next(draws)
    return seed + sample if seed else 0


# ------------------------------------------------------------------------------------------- names


def sample_name(row: PromptRow, sample: int, fallback: str, save_prefix: str = "",
                prompt_as_path: bool = False) -> str:
    """The file name (no extension) the reference gives a sample."""
    if prompt_as_path:
        return f"{row.text.strip('.')}-{sample}"
    name = save_prefix + row.name if row.name else f"{save_prefix}{fallback}_{row.index:04d}"
    return f"{name}_{sample}" if sample > 0 else name


def sub_dir(num_frames: int, resolution: str | None) -> str:
    """``video_256px`` (``image_...`` for one frame), the reference's folder under the output folder."""
    return f"{'image' if num_frames == 1 else 'video'}_{resolution}"


# -------------------------------------------------------------------------------------------- plan


def plan(rows: Sequence[PromptRow], fallback: str, batch_size: int = 1, num_sample: int = 1,
         seed: int | None = None, global_seed: int = OPEN_SORA_GLOBAL_SEED, save_prefix: str = "",
         prompt_as_path: bool = False) -> list[Generation]:
    """Every generation of the run, in the reference's order: samples outer, batches inner."""
    if batch_size < 1 or num_sample < 1:
        raise ValueError("--batch-size and --num-sample must be 1 or more.")
    draws = open_sora_seed_draws(global_seed)
    generations = []
    for sample in range(num_sample):
        for start in range(0, len(rows), batch_size):
            batch = tuple(rows[start:start + batch_size])
            names = tuple(sample_name(r, sample, fallback, save_prefix, prompt_as_path) for r in batch)
            generations.append(Generation(sample, batch, generation_seed(seed, sample, draws), names))
    return generations
