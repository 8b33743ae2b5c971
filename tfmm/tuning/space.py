"""The search space of ``tfmm tune``: which run-config fields a trial changes, and to what.

A :class:`SearchSpace` names a range or a list of choices per searched field; ``None`` (or an
empty list) leaves that field at the base config's value. :func:`default_space` picks
sensible ranges from the base config:

- ``learning_rate``: log-uniform, 1e-4..1e-2 when every used encoder is frozen (a fresh head
  learns), else 1e-5..1e-3 (fine-tuning);
- ``dropout``: 0.0..0.5 in steps of 0.1;
- ``fusion``: concat, sum, mean, gated (only when both modalities are used);
- ``projection_dim``: 64, 128, 256, 512;
- ``unfreeze_image_blocks`` / ``unfreeze_text_layers``: 0, 1, 2, only for an encoder the base
  config trains (not frozen) and whose family splits into blocks; otherwise only when asked.

Unfrozen depth ``0`` keeps the base config's encoder as it is (frozen, or trained whole);
``N > 0`` trains its top N blocks, unfreezing it first if the base config froze it.

Example:
    >>> space = default_space(config).replace(fusion=("concat", "gated"))
    >>> hp = to_hyperparameters(space)            # a keras_tuner.HyperParameters
    >>> trial_config = apply_values(config, {"fusion": "gated", "dropout": 0.3})
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

from tfmm.config import FUSIONS, RunConfig

# searched name -> (config section, field)
FIELDS = {
    "learning_rate": ("train", "learning_rate"),
    "dropout": ("model", "dropout"),
    "fusion": ("model", "fusion"),
    "projection_dim": ("model", "projection_dim"),
    "unfreeze_image_blocks": ("model", "unfreeze_image_blocks"),
    "unfreeze_text_layers": ("model", "unfreeze_text_layers"),
}
RANGES = ("learning_rate", "dropout")  # (min, max); the others are lists of choices
HEAD_LEARNING_RATES = (1e-4, 1e-2)
FINE_TUNE_LEARNING_RATES = (1e-5, 1e-3)
DROPOUT_STEP = 0.1
DEFAULT_PROJECTION_DIMS = (64, 128, 256, 512)
DEFAULT_DEPTHS = (0, 1, 2)
# Encoder families whose blocks freezing.unfreeze_top_blocks can find.
_BLOCK_TEXT_ENCODERS = ("minilm", "keras_hub:", "keras_nlp:")
_NO_BLOCK_IMAGE_ENCODERS = ("tfhub:",)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """What ``tfmm tune`` searches over (``None``/empty: the base config's value is kept).

    Args:
        learning_rate: ``(min, max)``, sampled log-uniformly (one value: fixed).
        dropout: ``(min, max)``, sampled in steps of 0.1 (``min == max``: fixed).
        fusion: fusion names to choose from (a subset of ``tfmm.config.FUSIONS``).
        projection_dim: widths to choose from.
        unfreeze_image_blocks / unfreeze_text_layers: depths to choose from (0: the base
            config's encoder unchanged; N: train its top N blocks).
    """

    learning_rate: Optional[Tuple[float, float]] = None
    dropout: Optional[Tuple[float, float]] = None
    fusion: Tuple[str, ...] = ()
    projection_dim: Tuple[int, ...] = ()
    unfreeze_image_blocks: Tuple[int, ...] = ()
    unfreeze_text_layers: Tuple[int, ...] = ()

    def __post_init__(self):
        for name in RANGES:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _check_range(name, value))
        for name in ("fusion", "projection_dim", "unfreeze_image_blocks", "unfreeze_text_layers"):
            object.__setattr__(self, name, tuple(getattr(self, name) or ()))
        bad = [f for f in self.fusion if f not in FUSIONS]
        if bad:
            raise ValueError(f"fusion choices must be in {list(FUSIONS)}; received {bad}")
        for name in ("projection_dim", "unfreeze_image_blocks", "unfreeze_text_layers"):
            values = getattr(self, name)
            floor = 1 if name == "projection_dim" else 0
            if any(not isinstance(v, int) or v < floor for v in values):
                raise ValueError(f"{name} choices must be integers >= {floor}; received {list(values)}")
        if self.dropout is not None and not (0.0 <= self.dropout[0] and self.dropout[1] < 1.0):
            raise ValueError(f"dropout range must lie in [0, 1); received {self.dropout}")

    def replace(self, **fields) -> "SearchSpace":
        return dataclasses.replace(self, **fields)

    @property
    def searched(self) -> list:
        """The names this space varies (a single choice or ``min == max`` is fixed, not searched)."""
        names = []
        for name in FIELDS:
            value = getattr(self, name)
            if name in RANGES and value is not None and value[0] != value[1]:
                names.append(name)
            elif name not in RANGES and len(value) > 1:
                names.append(name)
        return names

    @property
    def names(self) -> list:
        """Every name this space sets in a trial's config (searched or fixed)."""
        return [n for n in FIELDS if getattr(self, n) not in (None, ())]

    def to_dict(self) -> dict:
        return {n: list(v) if v is not None else None for n, v in dataclasses.asdict(self).items()}


def _check_range(name: str, value) -> tuple:
    try:
        values = [float(v) for v in value]
        low, high = values if len(values) == 2 else values * 2 if len(values) == 1 else (None, None)
        if low is None:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"{name} range must be two numbers MIN,MAX; received {value!r}") from None
    if not 0 <= low <= high or (name == "learning_rate" and low <= 0):
        raise ValueError(f"{name} range must be 0 {'<' if name == 'learning_rate' else '<='} MIN <= MAX; "
                         f"received {value!r}")
    return low, high


def _splits_into_blocks(config: RunConfig, branch: str) -> bool:
    mc = config.model
    if mc.encoder:  # a dual encoder (CLIP, SigLIP) provides both branches
        return False
    if branch == "text":
        return mc.text_encoder.startswith(_BLOCK_TEXT_ENCODERS)
    return not mc.image_encoder.startswith(_NO_BLOCK_IMAGE_ENCODERS)


def default_space(config: RunConfig) -> SearchSpace:
    """The space ``tfmm tune`` searches when no ``--tune-*`` flag narrows it (see the module doc)."""
    from tfmm.training.optimizer import all_encoders_frozen

    mc = config.model
    depths = {}
    for branch, name, frozen in (("image", "unfreeze_image_blocks", mc.freeze_image),
                                 ("text", "unfreeze_text_layers", mc.freeze_text)):
        used = getattr(mc, f"uses_{branch}")
        if used and not frozen and _splits_into_blocks(config, branch):
            depths[name] = DEFAULT_DEPTHS
    return SearchSpace(
        learning_rate=HEAD_LEARNING_RATES if all_encoders_frozen(config) else FINE_TUNE_LEARNING_RATES,
        dropout=(0.0, 0.5),
        fusion=FUSIONS if mc.modalities == "both" else (),
        projection_dim=DEFAULT_PROJECTION_DIMS,
        **depths,
    )


def fix_fields(space: SearchSpace, config: RunConfig, names: Sequence[str]) -> SearchSpace:
    """``space`` with each name in ``names`` fixed to ``config``'s value (a train flag given
    on the command line wins over the default search of that field)."""
    fixed = {}
    for name in names:
        section, field = FIELDS[name]
        value = getattr(getattr(config, section), field)
        if value is None:
            continue
        fixed[name] = (value, value) if name in RANGES else (value,)
    return space.replace(**fixed)


def to_hyperparameters(space: SearchSpace):
    """The space as a ``keras_tuner.HyperParameters`` (imports KerasTuner)."""
    import keras_tuner

    hp = keras_tuner.HyperParameters()
    for name in space.names:
        value = getattr(space, name)
        if name in RANGES and value[0] == value[1] or name not in RANGES and len(value) == 1:
            hp.Fixed(name, value[0])
        elif name == "learning_rate":
            hp.Float(name, value[0], value[1], sampling="log")
        elif name == "dropout":
            hp.Float(name, value[0], value[1], step=DROPOUT_STEP)
        else:
            hp.Choice(name, list(value))
    return hp


def apply_values(config: RunConfig, values: dict) -> RunConfig:
    """``config`` with a trial's hyperparameter values set (an unfrozen depth > 0 on an encoder
    the base config freezes unfreezes it first; 0 keeps the base config's setting).

    Raises:
        ValueError: a name that is not searchable (see ``FIELDS``).
    """
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {unknown}; allowed: {list(FIELDS)}")
    sections: dict = {}
    for name, value in values.items():
        section, field = FIELDS[name]
        if name.startswith("unfreeze_"):
            if not value:
                continue
            branch = "image" if "image" in name else "text"
            sections.setdefault("model", {})[f"freeze_{branch}"] = False
        if name == "learning_rate":
            value = float(value)
        elif name == "dropout":  # KerasTuner's stepped floats carry rounding noise (0.30000000000000004)
            value = round(float(value), 6)
        sections.setdefault(section, {})[field] = value
    return config.replace(**sections)


def build_space(config: RunConfig, *, fixed: Sequence[str] = (), **choices) -> SearchSpace:
    """:func:`default_space`, with the names in ``fixed`` set to ``config``'s values, then
    every ``choices`` entry that is not ``None`` (``learning_rate=(1e-4, 1e-3)``,
    ``fusion=("concat", "gated")``, ...) replacing that name's range or choices.

    Example:
        >>> build_space(config, fixed=["dropout"], fusion=("concat", "gated")).searched
        ['learning_rate', 'fusion', 'projection_dim']
    """
    unknown = sorted(set(choices) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown search option(s) {unknown}; allowed: {list(FIELDS)}")
    space = fix_fields(default_space(config), config, [n for n in fixed if n not in choices or choices[n] is None])
    return space.replace(**{k: v for k, v in choices.items() if v is not None})
