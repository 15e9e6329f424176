"""Seeds as users write them: ``0,1,2,3``, ``0-15`` or a mix (``0-3,10``)."""

from __future__ import annotations

from locoedit.core.errors import LocoeditError

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit integer


def parse_seeds(text: str) -> tuple[int, ...]:
    """The seeds ``text`` names, in order; refuses empty lists, descending ranges, repeats and out-of-range values."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        low, dash, high = part.partition("-")
        try:
            values = range(int(low), int(high) + 1) if dash else [int(low)]
        except ValueError:
            raise LocoeditError(
                f"seeds {text!r}: {part!r} is not a non-negative integer or a range like 0-15"
            ) from None
        if dash and int(high) < int(low):
            raise LocoeditError(f"seeds {text!r}: range {part!r} runs backwards; write it low-high, e.g. {high}-{low}")
        seeds.extend(values)
    return check_seeds(tuple(seeds), f"seeds {text!r}")


def seeds_text(seeds: tuple[int, ...]) -> str:
    """Seeds as they are typed: a run of consecutive seeds as a range (what :func:`parse_seeds` reads back)."""
    consecutive = len(seeds) > 1 and list(seeds) == list(range(seeds[0], seeds[0] + len(seeds)))
    return f"{seeds[0]}-{seeds[-1]}" if consecutive else ",".join(map(str, seeds))


def check_seeds(seeds, where: str = "seeds") -> tuple[int, ...]:
    """``seeds`` as a tuple of distinct integers in [0, 2**63); a LocoeditError naming the problem otherwise."""
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise LocoeditError(f"{where} must be a list of integers, got {type(seeds).__name__}; e.g. seeds=(0, 1, 2, 3)")
    seeds = tuple(seeds)
    if not seeds:
        raise LocoeditError(f"{where} is empty; give at least one seed, e.g. 0-3")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise LocoeditError(f"{where} holds {seed!r}; every seed must be an integer")
        if not 0 <= seed <= MAX_SEED:
            raise LocoeditError(f"{where} holds {seed}; seeds must be between 0 and {MAX_SEED}")
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise LocoeditError(f"{where} repeats {repeated}; give each seed once (a repeat would be counted twice)")
    return seeds
