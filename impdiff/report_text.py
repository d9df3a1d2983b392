"""Terminal rendering of a diff outcome (rich tables)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _layer(layer: int) -> str:
    return "-" if layer < 0 else str(layer)


def print_diff(console: Console, outcome, top: int = 12) -> None:
    v = outcome.verdict
    style = "bold red" if v.diverged else "bold green"
    labels = getattr(outcome, "labels", ("engine", "llama.cpp"))
    console.print(f"[{style}]{v.sentence(*labels)}[/{style}]", highlight=False)
    if v.substitution_detail:
        console.print(f"  substitution check: {v.substitution_detail}", highlight=False)
    lg = outcome.logits
    console.print(f"  logits over {lg['n_positions']} positions: top-1 agreement "
                  f"{lg['top1']:.1%}, top-5 overlap {lg['top5']:.1%}, KL mean {lg['kl_mean']:.2e} "
                  f"max {lg['kl_max']:.2e}", highlight=False)
    ls = outcome.lockstep
    for label, keys in ((f"only in {labels[0]}", ls.only_a), (f"only in {labels[1]}", ls.only_b)):
        if keys:
            names = sorted({k[0] for k in keys})
            console.print(f"  taps {label}: {', '.join(names)}", highlight=False)
    if ls.shape_mismatch:
        console.print(f"  taps with different shapes: "
                      f"{', '.join(sorted({k[0] for k in ls.shape_mismatch}))}", highlight=False)
    ec = getattr(outcome, "extra", {}).get("expert_choice")
    if ec is not None and len(ec):
        worst = ec.loc[ec.agreement.idxmin()]
        console.print(
            f"  expert choice ({labels[0]}'s own top-k vs {labels[1]}'s, {len(ec)} MoE layers): "
            f"agreement {ec.agreement.mean():.1%} mean, {worst.agreement:.1%} at worst (layer "
            f"{int(worst.layer)}); the same set at {ec.same_set.mean():.1%} of positions; "
            f"{int(ec.unexplained.sum())} positions with a swap router noise does not explain",
            highlight=False)
        console.print("    per layer: " + " ".join(f"{int(r.layer)}:{r.agreement:.3f}"
                                                 for r in ec.itertuples()), highlight=False)

    s = outcome.summary
    if s is None or s.empty:
        return
    if v.diverged:
        rows = s[s.diverged].head(top)
        title = "first divergent (layer, tap) in computation order"
    else:
        rows = s.assign(ratio=s["p99"] / s["threshold"]).sort_values("ratio", ascending=False
                                                                     ).head(top)
        title = "closest to their threshold (no divergence)"
    table = Table(title=title)
    for col in ("layer", "kind", "tap", "median err", "p99 err", "max err", "floor",
                "threshold", "positions above"):
        table.add_column(col, justify="right" if "err" in col or col in (
            "floor", "threshold", "positions above", "layer") else "left")
    for r in rows.itertuples():
        table.add_row(_layer(r.layer), outcome.layer_kinds.get(r.layer, ""), r.tap,
                      f"{r.median:.2e}", f"{r.p99:.2e}", f"{r.max:.2e}", f"{r.floor:.2e}",
                      f"{r.threshold:.2e}", f"{r.n_above}/{r.n}")
    console.print(table)
    if not v.diverged:
        floor = Table(title="noise floor per tap (relative L2 error)")
        floor.add_column("tap")
        floor.add_column("floor", justify="right")
        for tap, value in outcome.floor.items():
            floor.add_row(tap, f"{value:.2e}")
        console.print(floor)
