"""Which explanation to show first: from an audit's summary, the method (a CAM method possibly on its own
layer, "layercam@block6a_expand_activation") that localises best among those that are faithful and pass the
randomisation check. Stored in the bundle (`bundle.json["explanation"]`), it becomes what `explain`,
`report` and `serve` show unless told otherwise, with its audit score under each heatmap."""
from __future__ import annotations

from typing import Any, Mapping

__all__ = ["method_checks", "recommend", "score_line", "store"]


def method_checks(summary: Mapping[str, Any], method: str) -> dict[str, Any]:
    """One audited method's localisation (pointing game, energy: mean, 95% CI, n) and its checks: faithful
    (removing its most relevant pixels first hurts the score more than removing its least relevant first,
    by deletion vs insertion and ROAD) and passes the randomisation check; None where not measured."""
    scores = summary["scores"][method]["all"]
    faith = (summary.get("faithfulness") or {}).get(method, {}).get("summary")
    faithful = None
    if faith and all(k in faith for k in ("deletion_auc", "insertion_auc", "road_morf", "road_lerf")):
        faithful = bool(faith["insertion_auc"]["mean"] > faith["deletion_auc"]["mean"]
                        and faith["road_lerf"]["mean"] > faith["road_morf"]["mean"])
    sanity = ((summary.get("sanity") or {}).get("methods") or {}).get(method)
    return {"method": method, "pointing_game": dict(scores["pointing_game"]),
            "energy": dict(scores["energy_pointing_game"]), "faithful": faithful,
            "passes_randomisation": None if sanity is None else not bool(sanity.get("fails")),
            "n": int(scores["pointing_game"].get("n_valid", scores["pointing_game"].get("n", 0)))}


def recommend(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The method to show first, with its scores, the checks it passed, every candidate and why. Candidates
    failing a measured check are passed over; if every one fails, the best localiser is named and
    `passed_checks` says it did not pass them."""
    rows = [method_checks(summary, m) for m in summary["methods"]]
    if not rows:
        raise ValueError("the audit scored no method")
    eligible = [r for r in rows if r["faithful"] is not False and r["passes_randomisation"] is not False]
    pick = max(eligible or rows, key=lambda r: (r["pointing_game"]["mean"], r["energy"]["mean"]))
    chance = ((summary.get("chance") or {}).get("all") or {}).get("mask_fraction", {}).get("mean")
    return {"method": pick["method"], "pointing_game": pick["pointing_game"], "energy": pick["energy"],
            "n": pick["n"], "chance_energy": chance, "faithful": pick["faithful"],
            "passes_randomisation": pick["passes_randomisation"], "passed_checks": bool(eligible),
            "unseen": summary.get("unseen_definition", ""), "audit_command": summary.get("command", ""),
            "candidates": rows}


def score_line(recommendation: Mapping[str, Any], method: str) -> str | None:
    """What to print under a heatmap of `method`: its audit score, e.g. "peak inside the tumor on 67% of
    281 unseen scans (95% CI 61-72%)"; None when the audit did not score it."""
    row = next((r for r in recommendation.get("candidates", ()) if r["method"] == method), None)
    if row is None:
        return None
    pg = row["pointing_game"]
    text = (f"audit: peak inside the tumor on {pg['mean']:.0%} of {row['n']} unseen scans "
            f"(95% CI {pg['low']:.0%}-{pg['high']:.0%})")
    if row["passes_randomisation"] is False:
        text += "; fails the randomisation check"
    return text


def store(bundle_path, recommendation: Mapping[str, Any]) -> None:
    """Write the recommendation into the bundle's bundle.json (key "explanation"), replacing an earlier one:
    from then on it is what explain, report and serve show first."""
    from xai_bt.model.bundle import bundle_dir, read_config, write_config

    config = read_config(bundle_path)
    config["explanation"] = dict(recommendation)
    write_config(bundle_dir(bundle_path), config)

