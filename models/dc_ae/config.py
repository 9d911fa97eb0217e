"""Configuration of the Video DC-AE and its inference from a checkpoint's tensor shapes.

Facts: docs/reference.md#dc-ae; reference ``opensora/models/dc_ae/models/dc_ae.py`` (``dc_ae_f32``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

RESBLOCK = "ResBlock"
EVIT_GLU = "EViT_GLU"  # LiteMLA without multi-scale aggregation + GLUMBConv
EVIT_S5_GLU = "EViTS5_GLU"  # LiteMLA with a 5x5x5 aggregation branch + GLUMBConv (the released blocks)
BLOCK_TYPES = (RESBLOCK, EVIT_GLU, EVIT_S5_GLU)
ACTIVATIONS = ("silu", "relu", "gelu")

RELEASED_BLOCK_TYPES = (RESBLOCK,) * 3 + (EVIT_S5_GLU,) * 3
RELEASED_TEMPORAL_RESAMPLE = (False, False, False, True, True, False)


@dataclass(frozen=True)
class DCAEConfig:
    """Sizes of a Video DC-AE; the defaults are the released ``dc-ae-f32t4c128``.

    Stage ``i`` of the encoder runs ``encoder_depths[i]`` blocks of ``encoder_block_types[i]`` at width
    ``encoder_widths[i]`` and then (all but the last stage) halves H and W, and also T where
    ``temporal_downsample[i]``. The decoder mirrors it (its stages run from the last to the first).
    Norms are RMSNorm3d throughout; ``scaling_factor`` ``None`` (the shipped inference config) means
    latents are not scaled.
    """

    in_channels: int = 3
    latent_channels: int = 128
    encoder_widths: tuple[int, ...] = (128, 256, 512, 512, 1024, 1024)
    encoder_depths: tuple[int, ...] = (2, 2, 2, 3, 3, 3)
    encoder_block_types: tuple[str, ...] = RELEASED_BLOCK_TYPES
    decoder_widths: tuple[int, ...] = (128, 256, 512, 512, 1024, 1024)
    decoder_depths: tuple[int, ...] = (3, 3, 3, 3, 3, 3)
    decoder_block_types: tuple[str, ...] = RELEASED_BLOCK_TYPES
    temporal_downsample: tuple[bool, ...] = RELEASED_TEMPORAL_RESAMPLE
    temporal_upsample: tuple[bool, ...] = RELEASED_TEMPORAL_RESAMPLE
    act: str = "silu"
    decoder_out_act: str = "relu"
    attention_head_dim: int = 32
    mlp_expand_ratio: int = 4
    scaling_factor: float | None = None

    def __post_init__(self) -> None:
        for side in ("encoder", "decoder"):
            widths = getattr(self, f"{side}_widths")
            depths = getattr(self, f"{side}_depths")
            types = getattr(self, f"{side}_block_types")
            flags = getattr(self, "temporal_downsample" if side == "encoder" else "temporal_upsample")
            if not (len(widths) == len(depths) == len(types) == len(flags)) or not widths:
                raise ValueError(
                    f"DC-AE {side}: widths, depths, block types and temporal flags need one entry per stage "
                    f"(got {len(widths)}, {len(depths)}, {len(types)}, {len(flags)})."
                )
            if flags[-1]:
                raise ValueError(f"DC-AE {side}: the last stage has no resampling, its temporal flag must be False.")
            for width, depth, kind in zip(widths, depths, types):
                if depth < 1:
                    raise ValueError(f"DC-AE {side}: every stage needs at least one block (depths {depths}).")
                if kind not in BLOCK_TYPES:
                    raise ValueError(f"DC-AE {side}: unknown block type {kind!r}; known: {', '.join(BLOCK_TYPES)}.")
                if kind != RESBLOCK and width % self.attention_head_dim:
                    raise ValueError(
                        f"DC-AE {side}: attention stages need widths divisible by the head dim "
                        f"{self.attention_head_dim} (got {width})."
                    )
        if len(self.encoder_widths) != len(self.decoder_widths) or sum(self.temporal_downsample) != sum(
            self.temporal_upsample
        ):
            raise ValueError("DC-AE encoder and decoder must have the same spatial and temporal compression.")
        for name in ("act", "decoder_out_act"):
            if getattr(self, name) not in ACTIVATIONS:
                raise ValueError(f"DC-AE {name} must be one of {', '.join(ACTIVATIONS)} (got {getattr(self, name)!r}).")

    @property
    def spatial_compression(self) -> int:
        """Pixels per latent along H and W (32 for the released model)."""
        return 2 ** (len(self.encoder_widths) - 1)

    @property
    def temporal_compression(self) -> int:
        """Frames per latent frame (4 for the released model); a single frame stays a single latent."""
        return 2 ** sum(self.temporal_downsample)


_STAGE_KEY = re.compile(r"^(encoder|decoder)\.stages\.(\d+)\.op_list\.(\d+)\.(.+)$")


def dc_ae_config_from_shapes(
    shapes: Mapping[str, tuple[int, ...]],
    temporal_resample: tuple[bool, ...] | None = None,
    scaling_factor: float | None = None,
) -> DCAEConfig:
    """Infer a :class:`DCAEConfig` from a DC-AE state dict's ``{key: shape}`` (official key layout).

    Inferred: in/latent channels, per-stage widths, depths and block types (ResBlock; LiteMLA with or
    without the 5x5x5 aggregation), the attention head dim (from the grouped aggregation conv) and the
    GLUMBConv expansion. Not stored in a checkpoint, so taken from the arguments or the release:
    - the temporal down/up-sampling flags (conv strides leave no trace in weight shapes): the released
      ``[F, F, F, T, T, F]`` for six stages, otherwise ``temporal_resample`` must be given;
    - the activations (SiLU in the blocks, ReLU before the decoder output) and ``scaling_factor``
      (``None`` as in the shipped inference config).
    Raises ``ValueError`` naming the missing key when the shapes are not a DC-AE's.
    """

    def shape(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise ValueError(f"Not a Video DC-AE state dict: key '{key}' is missing.")
        return tuple(shapes[key])

    in_channels = shape("encoder.project_in.conv.weight")[1]
    latent_channels = shape("decoder.project_in.main.conv.weight")[1]

    # side -> stage -> op index -> parameter suffixes
    ops: dict[str, dict[int, dict[int, list[str]]]] = {"encoder": {}, "decoder": {}}
    for key in shapes:
        match = _STAGE_KEY.match(key)
        if match:
            side, stage, op, rest = match.groups()
            ops[side].setdefault(int(stage), {}).setdefault(int(op), []).append(rest)

    head_dims: set[int] = set()
    expand_ratios: set[int] = set()

    def describe_side(side: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[str, ...]]:
        stages = ops[side]
        if not stages or sorted(stages) != list(range(len(stages))):
            raise ValueError(f"Not a Video DC-AE state dict: '{side}.stages.N' are missing or not numbered 0..N.")
        widths, depths, types = [], [], []
        for index in range(len(stages)):
            prefix = f"{side}.stages.{index}.op_list"
            kinds: list[str] = []
            width = 0
            for op in sorted(stages[index]):
                names = stages[index][op]
                if "main.conv1.conv.weight" in names:
                    kinds.append(RESBLOCK)
                    width = shape(f"{prefix}.{op}.main.conv1.conv.weight")[0]
                elif "context_module.main.qkv.conv.weight" in names:
                    aggregated = "context_module.main.aggreg.0.0.weight" in names
                    kinds.append(EVIT_S5_GLU if aggregated else EVIT_GLU)
                    width = shape(f"{prefix}.{op}.context_module.main.proj.conv.weight")[0]
                    if aggregated:
                        head_dims.add(shape(f"{prefix}.{op}.context_module.main.aggreg.0.1.weight")[1])
                    hidden = shape(f"{prefix}.{op}.local_module.main.point_conv.conv.weight")[1]
                    expand_ratios.add(hidden // width)
            if not kinds or len(set(kinds)) != 1:
                raise ValueError(f"Unsupported Video DC-AE layout in '{prefix}': blocks {kinds or 'none'}.")
            widths.append(width)
            depths.append(len(kinds))
            types.append(kinds[0])
        return tuple(widths), tuple(depths), tuple(types)

    encoder_widths, encoder_depths, encoder_types = describe_side("encoder")
    decoder_widths, decoder_depths, decoder_types = describe_side("decoder")
    if len(head_dims) > 1 or len(expand_ratios) > 1:
        raise ValueError(f"Unsupported Video DC-AE: mixed head dims {head_dims} or expansions {expand_ratios}.")

    if temporal_resample is None:
        if len(encoder_widths) != len(RELEASED_TEMPORAL_RESAMPLE):
            raise ValueError(
                f"This DC-AE has {len(encoder_widths)} stages; its temporal down/up-sampling flags are not "
                "stored in the file and the released ones are for 6 stages: pass temporal_resample."
            )
        temporal_resample = RELEASED_TEMPORAL_RESAMPLE
    return DCAEConfig(
        in_channels=in_channels,
        latent_channels=latent_channels,
        encoder_widths=encoder_widths,
        encoder_depths=encoder_depths,
        encoder_block_types=encoder_types,
        decoder_widths=decoder_widths,
        decoder_depths=decoder_depths,
        decoder_block_types=decoder_types,
        temporal_downsample=tuple(temporal_resample),
        temporal_upsample=tuple(temporal_resample),
        attention_head_dim=head_dims.pop() if head_dims else DCAEConfig.attention_head_dim,
        mlp_expand_ratio=expand_ratios.pop() if expand_ratios else DCAEConfig.mlp_expand_ratio,
        scaling_factor=scaling_factor,
    )
