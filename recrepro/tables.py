"""Results tables: measured rows, the analytic chance row and the paper's values, in one place.

``results/<profile>/table1.csv`` is long-format: one row per (dataset, model, source). Columns:
dataset, model, H@1, H@5, H@10, N@5, N@10, n, profile, source, then the 95% bootstrap bounds
(``<metric>_lo``, ``<metric>_hi``) and ``paper_marks`` (the PAPER.md mark of each paper value).
``source`` is ``measured`` (our run), ``analytic`` (the exact chance level), ``reference`` (a fixed
rule scored on the LLM rows' test lists: "First ten candidates"), ``paper`` (reported
by the paper; dataset uses the paper's short names) or ``not run`` (a paper baseline the kit does
not run, listed per profile dataset with empty metrics; see :func:`not_run_rows`). Stages add
their rows with :func:`upsert_rows`, so re-running one stage replaces only its own rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from recrepro.io import write_text_atomic
from recrepro.metrics import metric_names
from recrepro.paper import paper_name, reported_values

TABLE1_TITLE = "Table 1: top-K accuracy on the frozen test lists (20 candidates)"
TABLE2_TITLE = "Table 2: ablation of tools and training (R = reasoning only, TIRR = tool-integrated)"
KEY = ["dataset", "model", "source"]
MODEL_ORDER = [
    "Chance", "First ten candidates", "Random", "MostPop", "Caser", "GRU4Rec", "SASRec", "ReaRec", "ReaRec-ERL", "ReaRec-PRL",
    "LLMRank", "LLMRank-like (frozen R)", "LLMRank (served)", "InteRecAgent", "InteRecAgent-like (frozen TIRR)",
    "InteRecAgent (served)", "TALLRec", "TALLRec-like (SFT)", "LLaRA", "S-DPO", "ReRe", "AgenticRec", "AgenticRec (RTA)", "AgenticRec (RTA+PPR)",
    "frozen-R", "frozen-TIRR", "trained-R", "trained-TIRR-RTA", "trained-TIRR-RTA+PPR",
]
SOURCE_ORDER = {"analytic": 0, "reference": 1, "measured": 2, "paper": 3, "not run": 4}
# Table 1 rows of PAPER.md 1.6 the kit does not run. They are listed for every dataset of the profile
# as source "not run" (metrics empty, never invented) so that none is silently left out; the paper's
# values, where it reports that dataset, stay in the source "paper" rows.
NOT_RUN_MODELS = ["ReaRec", "LLMRank", "InteRecAgent", "TALLRec", "LLaRA", "S-DPO", "ReRe"]
NOT_RUN = "not run"
# A paper baseline the kit measures under other row names (its variants) is not "not run" when a
# profile runs any of them: ReaRec's two training schemes are rows of their own.
MEASURED_AS = {"ReaRec": ("ReaRec-ERL", "ReaRec-PRL"), "TALLRec": ("TALLRec-like (SFT)",),
               "LLMRank": ("LLMRank (served)",), "InteRecAgent": ("InteRecAgent (served)",)}
# Why a row stays "not run" (shown in the rendered table); a trained baseline disabled in a profile gets
# the generic reason.
NOT_RUN_REASONS = {
    "LLMRank": "the paper's LLMRank prompts GPT-4; no served model is given to this run (profile section "
               "served; stand-in on our backbone: LLMRank-like (frozen R))",
    "InteRecAgent": "the paper's InteRecAgent calls GPT-4; no served model is given to this run (profile section "
                    "served; stand-in on our backbone: InteRecAgent-like (frozen TIRR))",
}
DISABLED_REASON = "disabled in this profile"


def _sorted(table: pd.DataFrame) -> pd.DataFrame:
    model_rank = {name: i for i, name in enumerate(MODEL_ORDER)}
    order = pd.DataFrame({
        "source": table["source"].map(SOURCE_ORDER).fillna(9),
        "dataset": table["dataset"],
        "model": table["model"].map(lambda m: model_rank.get(m, len(MODEL_ORDER))),
        "name": table["model"],
    })
    return table.loc[order.sort_values(["source", "dataset", "model", "name"], kind="stable").index].reset_index(drop=True)


def paper_rows(table: str, profile_name: str, ks: list[int]) -> pd.DataFrame:
    """The paper's reported values for one table, one row per (dataset, model)."""
    reported = reported_values()
    reported = reported[reported["table"] == table]
    wide = reported.pivot_table(index=["dataset", "model"], columns="metric", values="value", aggfunc="first")
    marks = reported.groupby(["dataset", "model"]).apply(
        lambda g: ";".join(f"{m}:{k}" for m, k in zip(g["metric"], g["mark"])), include_groups=False)
    wide = wide.reindex(columns=metric_names(ks))
    wide["paper_marks"] = marks
    wide = wide.reset_index()
    wide["n"] = np.nan
    wide["profile"] = profile_name
    wide["source"] = "paper"
    return wide


def not_run_models(measured: list[str]) -> list[str]:
    """:data:`NOT_RUN_MODELS` less those the profile measures, under their own name or a variant's
    (:data:`MEASURED_AS`)."""
    return [m for m in NOT_RUN_MODELS if not ({m, *MEASURED_AS.get(m, ())} & set(measured))]


def not_run_rows(datasets: list[str], profile_name: str, ks: list[int], measured: list[str] | None = None
                 ) -> pd.DataFrame:
    """One "not run" row per (profile dataset, model of :func:`not_run_models`), metrics NaN; ``measured``
    names the models the profile runs (e.g. its RecBole models).

    ``paper_marks`` holds the marks of the paper's values for that model on that dataset (via the
    paper's short dataset name), empty where the paper reports none (always so for ml-100k).
    """

    reported = paper_rows("table1", profile_name, ks).set_index(["dataset", "model"])
    rows = []
    for dataset in datasets:
        short = paper_name(dataset)
        for model in not_run_models(measured or []):
            marks = reported["paper_marks"].get((short, model), "") if short else ""
            row: dict = {"dataset": dataset, "model": model, **{m: np.nan for m in metric_names(ks)},
                         "n": np.nan, "profile": profile_name, "source": NOT_RUN, "paper_marks": marks}
            rows.append(row)
    return pd.DataFrame(rows)


def drop_stale_not_run_rows(path: Path | str, still_not_run: list[str]) -> None:
    """Remove "not run" rows of models now measured (an earlier run of the same folder wrote them)."""
    path = Path(path)
    if not path.is_file():
        return
    old = pd.read_csv(path)
    stale = (old["source"] == NOT_RUN) & ~old["model"].isin(still_not_run)
    if stale.any():
        write_text_atomic(path, old[~stale].to_csv(index=False, float_format="%.6g"))


def upsert_rows(path: Path | str, rows: pd.DataFrame | list[dict]) -> pd.DataFrame:
    """Replace rows with the same (dataset, model, source) key in the CSV at ``path``; write atomically."""
    path = Path(path)
    new = pd.DataFrame(rows)
    if path.is_file() and not len(new):  # nothing to add: re-sort and re-write what is there
        merged = pd.read_csv(path)
    elif path.is_file():
        old = pd.read_csv(path)
        keys = set(map(tuple, new[KEY].astype(str).to_numpy()))
        keep = [tuple(k) not in keys for k in old[KEY].astype(str).to_numpy()]
        merged = pd.concat([old[keep], new], ignore_index=True)
    else:
        merged = new
    merged = _sorted(merged)
    write_text_atomic(path, merged.to_csv(index=False, float_format="%.6g"))
    return merged


def _cell(value: float, lo: float | None = None, hi: float | None = None) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    text = f"{value:.4f}"
    if lo is not None and hi is not None and not np.isnan(lo) and hi > lo:
        text += f" [{lo:.3f}, {hi:.3f}]"
    return text


def render_markdown(table: pd.DataFrame, title: str, ks: list[int]) -> str:
    """Markdown: measured and chance rows per dataset, then the paper's values in their own section."""
    names = metric_names(ks)
    profile = table["profile"].iloc[0] if len(table) else "?"
    lines = [f"# {title}", "",
             f"Profile: **{profile}**. Cells: mean [95% bootstrap interval]. "
             "Chance is the exact expectation for 20 candidates and one positive (PAPER.md 1.1).", ""]
    ours = table[~table["source"].isin(["paper", NOT_RUN])]
    header = "| dataset | model | " + " | ".join(names) + " | n | source |"
    rule = "|" + "---|" * (len(names) + 4)
    if len(ours):
        lines += ["## Measured by this kit", "", header, rule]
        for _, row in ours.iterrows():
            cells = [_cell(row[m], row.get(f"{m}_lo"), row.get(f"{m}_hi")) for m in names]
            lines.append(f"| {row['dataset']} | {row['model']} | " + " | ".join(cells)
                         + f" | {int(row['n'])} | {row['source']} |")
    lines += _not_run_section(table, names)
    paper = table[table["source"] == "paper"]
    if len(paper):
        note = ("These are the paper's numbers on its Amazon 2023 datasets. "
                + ("They are not comparable with the ml-100k smoke numbers above." if profile == "smoke" else
                   "Compare each with the measured row of the same dataset and model."))
        lines += ["", "## Reported by the paper", "", note,
                  "Marks (PAPER.md): N = two agreeing reading notes, S = secondary source only.", "",
                  "| dataset | model | " + " | ".join(names) + " | marks |", "|" + "---|" * (len(names) + 3)]
        for _, row in paper.iterrows():
            cells = [_cell(row[m]) for m in names]
            lines.append(f"| {row['dataset']} | {row['model']} | " + " | ".join(cells) + f" | {row['paper_marks']} |")
    return "\n".join(lines) + "\n"


def _not_run_section(table: pd.DataFrame, names: list[str]) -> list[str]:
    """Markdown lines for the "not run" rows, each beside the paper's values on that dataset (if any)."""

    skipped = table[table["source"] == NOT_RUN]
    if not len(skipped):
        return []
    paper = table[table["source"] == "paper"].set_index(["dataset", "model"])
    lines = ["", "## Not run by this kit", "",
             "Paper baselines this run did not train or call (PAPER.md 1.6). Cells are the paper's values "
             "for the same dataset where it reports one, never our measurement.", "",
             "| dataset | model | " + " | ".join(f"paper {n}" for n in names) + " | note |",
             "|" + "---|" * (len(names) + 3)]
    for _, row in skipped.iterrows():
        key = (paper_name(str(row["dataset"])), row["model"])
        if key in paper.index:
            cells = [_cell(paper.loc[key, m]) for m in names]
            note = f"paper's values on {key[0]} ({paper.loc[key, 'paper_marks']})"
        else:
            cells = ["–"] * len(names)
            note = "the paper reports no value for this dataset"
        note = f"not run: {NOT_RUN_REASONS.get(row['model'], DISABLED_REASON)}; {note}"
        lines.append(f"| {row['dataset']} | {row['model']} | " + " | ".join(cells) + f" | {note} |")
    return lines


def render_latex(table: pd.DataFrame, ks: list[int]) -> str:
    names = metric_names(ks)
    profile = table["profile"].iloc[0] if len(table) else "?"
    body = [r"\begin{tabular}{ll" + "r" * len(names) + "l}", r"\toprule",
            "Dataset & Model & " + " & ".join(n.replace("@", r"@") for n in names) + r" & Source \\", r"\midrule"]
    for _, row in table.iterrows():
        cells = [("--" if pd.isna(row[m]) else f"{row[m]:.4f}") for m in names]
        dataset = str(row["dataset"]).replace("_", r"\_")
        body.append(f"{dataset} & {row['model']} & " + " & ".join(cells)
                    + f" & {row['source']} \\\\")
    body += [r"\bottomrule", r"\end{tabular}"]
    return f"% profile: {profile}; generated by recrepro.tables\n" + "\n".join(body) + "\n"


def write_table(results_dir: Path | str, stem: str, rows: list[dict], title: str, ks: list[int],
                paper_table: str | None = None) -> pd.DataFrame:
    """Upsert ``rows`` (and the paper's rows) into ``<stem>.csv`` and re-render ``.md`` and ``.tex``."""
    results_dir = Path(results_dir)
    frame = pd.DataFrame(rows)
    if paper_table is not None and len(frame):
        frame = pd.concat([frame, paper_rows(paper_table, str(frame["profile"].iloc[0]), ks)], ignore_index=True)
    table = upsert_rows(results_dir / f"{stem}.csv", frame)
    write_text_atomic(results_dir / f"{stem}.md", render_markdown(table, title, ks))
    write_text_atomic(results_dir / f"{stem}.tex", render_latex(table, ks))
    return table
