"""The ``uniform`` strategy: quantization-aware training at one bit-width everywhere."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from mpsearch.api import (MAX_BITS, QUANTIZER_FAMILIES, MpsearchError, Param, PrecisionAssignment,
                          SearchResult, SpecError, Strategy, hookimpl, quantize_at, suggest_param)

WIDTHS = (2, 3, 4, 5, 6, 8)
SEPARATE = ("weight_bits", "act_bits")


class UniformStrategy(Strategy):
    """Quantization-aware training with one bit-width for every weight and activation group.

    The baseline every mixed-precision paper compares against (DoReFa-Net, Zhou et
    al. 2016; PACT, Choi et al. 2018): the trial's start (the study's float start)
    is quantized at ``bits`` (weights and input activations alike), PACT's clips
    are calibrated on ``[training] calibration_images`` (the clip minimising the
    squared quantization error), and the shared fine-tuning trains it for the
    trial's ``epochs``. With ``epochs = 0`` it is post-training quantization.

    Parameters (defaults):
        bits: ``[2, 3, 4, 5, 6, 8]``; the width of weights and activations.
        weight_bits, act_bits: fixed 0, meaning "the same as ``bits``". A space
            that names either draws it and overrides ``bits`` for that kind;
            naming both makes ``bits`` unused, so a space may then not name it.
        first_last_bits: fixed 0, meaning "the same as the rest"; e.g. 8 keeps
            the first and last quantized layers (weights and inputs) at 8 bits, as
            most papers do.
        quantizer: fixed ``"dorefa-pact"`` (DoReFa weights, PACT activations), or
            ``"minmax"`` (BitPruning's min-max quantizer for both).

    Only the parameters a space makes relevant are drawn and recorded: ``bits``
    is neither drawn nor recorded when both separate widths are given.
    """

    label = "uniform"
    resumable = True
    post_training = True
    parameters: ClassVar[Mapping[str, Param]] = {
        "bits": Param(choices=WIDTHS),
        "weight_bits": Param(value=0),
        "act_bits": Param(value=0),
        "first_last_bits": Param(value=0),
        "quantizer": Param(value="dorefa-pact"),
    }

    @classmethod
    def check_space(cls, space: Mapping[str, Param], where: str) -> None:
        """Reject unknown names, widths outside 1-32, unknown quantizers and an unused ``bits``."""
        super().check_space(space, where)
        merged = {**cls.parameters, **space}
        for name in ("bits", *SEPARATE, "first_last_bits"):
            lowest = 1 if name == "bits" else 0
            p = merged[name]
            if p.low is not None and not p.integer:
                raise SpecError(f"{where}.{name}: a range of widths needs integer low and high.")
            for v in p.values():
                if isinstance(v, bool) or not isinstance(v, int) or not lowest <= v <= MAX_BITS:
                    raise SpecError(f"{where}.{name}: {v!r} is not a width; use integers "
                                    f"{lowest}-{MAX_BITS}" + (" (0: the same as bits)."
                                                             if lowest == 0 else "."))
        for v in merged["quantizer"].values():
            if v not in QUANTIZER_FAMILIES:
                raise SpecError(f"{where}.quantizer: {v!r} is not a quantizer family; use one "
                                f"of {', '.join(QUANTIZER_FAMILIES)}.")
        if "bits" in space and not _needs_bits(merged):
            raise SpecError(f"{where}: bits is never used when weight_bits and act_bits are both "
                            f"given (without 0); drop bits, or one of weight_bits and act_bits.")

    def suggest(self, trial: Any, space: Mapping[str, Param], prefix: str) -> dict[str, Any]:
        """Draw ``bits`` only where a width follows it, and the separate widths only if named."""
        self.check_space(space, f"strategy {prefix!r} space")
        merged = {**self.parameters, **space}
        drawn: dict[str, Any] = {}
        for name in SEPARATE:
            if not _is_follow(merged[name]):
                drawn[name] = suggest_param(trial, f"{prefix}.{name}", merged[name])
        if any(drawn.get(name, 0) == 0 for name in SEPARATE):
            drawn["bits"] = suggest_param(trial, f"{prefix}.bits", merged["bits"])
        for name in ("first_last_bits", "quantizer"):
            drawn[name] = suggest_param(trial, f"{prefix}.{name}", merged[name])
        # A separate width drawn as 0 follows bits: record it as absent, as if not named.
        return {k: v for k, v in drawn.items() if not (k in SEPARATE and v == 0)}

    def search(self, context, params: Mapping[str, Any]) -> SearchResult:
        """Quantize the start at the one width (ranges calibrated); all the epochs fine-tune."""
        self.check_space({n: Param(value=v) for n, v in params.items()},
                         "strategy 'uniform' parameters")
        weight_bits, act_bits = widths(params)
        first_last = int(params.get("first_last_bits", 0)) or None
        family = params.get("quantizer", "dorefa-pact")
        assignment = PrecisionAssignment.uniform(context.profile, weight_bits, act_bits,
                                                 first_last_bits=first_last)
        model = quantize_at(context.model, context.profile, context.legalise(assignment), family)
        context.calibrate(model)
        return SearchResult(model, assignment, float(context.epochs),
                            {"weight_bits": weight_bits, "act_bits": act_bits})


def widths(params: Mapping[str, Any]) -> tuple[int, int]:
    """The (weight, activation) widths a parameter set asks for; a missing or 0 one follows ``bits``.

    Raises:
        MpsearchError: a width follows ``bits`` but ``bits`` is not given.
    """
    out = []
    for name in SEPARATE:
        value = int(params.get(name) or 0)
        if value == 0:
            if params.get("bits") is None:
                raise MpsearchError(f"strategy 'uniform' needs bits, or {name} (got parameters "
                                    f"{', '.join(sorted(params)) or 'none'}).")
            value = int(params["bits"])
        out.append(value)
    return out[0], out[1]


def _is_follow(p: Param) -> bool:
    """A space that always means "the same as bits" (the default fixed 0)."""
    return p.fixed and p.value == 0


def _needs_bits(merged: Mapping[str, Param]) -> bool:
    return any(0 in merged[name].values() for name in SEPARATE)


@hookimpl
def register_strategies(register):
    register("uniform", UniformStrategy)
