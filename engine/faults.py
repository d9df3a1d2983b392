"""Deliberate bugs the engine can be asked to carry (`--inject NAME[@LAYER]`).

They reproduce real classes of engine bugs so that the debugger can be demonstrated and tested
on a known answer. Each fault is off unless named; with `@LAYER` it applies to that layer only,
otherwise to every layer it can apply to.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ModelLoadError

FAULTS: dict[str, str] = {
    "swa-on-global": "the sliding-window mask is applied on global (full-attention) layers too",
    "rope-base-global": "global layers use the sliding layers' rope base (e.g. 1e4 instead of 1e6)",
    "no-qk-norm": "the per-head RMS norm on Q and K is skipped",
    "embed-scale": "embeddings are scaled by n_embd instead of sqrt(n_embd)",
    "swa-off-by-one": "the sliding window lets one key too many through (p_q - p_k <= window)",
    "transposed-block": "one 256x256 tile (a K-quant super-block wide) of the attention output "
                        "projection is laid out transposed",
    # Gemma 4: the seeds' hypotheses for the 26B-A4B long-context failure
    "rope-prop-rotated-dims": "global layers' proportional rope takes its frequencies from the "
                              "rotated dims (head_dim/4) instead of the full head dim",
    "rope-prop-pairs": "global layers' partial rotation pairs dim i with i + rotated/2 (the first "
                       "quarter rotated as one block) instead of i + head_dim/2",
    "rope-dims-global": "global layers rotate with the sliding layers' rope dims (their head dim)",
    "kv-share-wrong-layer": "KV-shared layers read the cache of the layer of their kind before the "
                            "right one",
    "router-no-scale": "the MoE router's input is not multiplied by its learned scale "
                       "(ffn_gate_inp.scale)",
}


@dataclass(frozen=True)
class Fault:
    name: str
    layer: int | None = None

    def applies(self, layer: int) -> bool:
        return self.layer is None or self.layer == layer


@dataclass(frozen=True)
class FaultSet:
    faults: tuple[Fault, ...] = ()

    def active(self, name: str, layer: int = -1) -> bool:
        return any(f.name == name and (layer < 0 or f.applies(layer)) for f in self.faults)

    def layers_for(self, name: str, n_layer: int) -> list[int]:
        return [i for i in range(n_layer) if self.active(name, i)]

    def __bool__(self) -> bool:
        return bool(self.faults)

    def __str__(self) -> str:
        return ",".join(f.name + (f"@{f.layer}" if f.layer is not None else "") for f in self.faults)


def parse_faults(spec: str | None) -> FaultSet:
    """Parse 'swa-on-global,transposed-block@7'."""
    if not spec:
        return FaultSet()
    faults = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, layer = part.partition("@")
        if name not in FAULTS:
            raise ModelLoadError(f"--inject: unknown fault '{name}' (known: {', '.join(FAULTS)})")
        if layer and not layer.isdigit():
            raise ModelLoadError(f"--inject: '{part}': the layer after @ must be a number")
        faults.append(Fault(name, int(layer) if layer else None))
    return FaultSet(tuple(faults))
