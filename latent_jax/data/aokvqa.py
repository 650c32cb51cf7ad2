"""A-OKVQA (v1p0): knowledge-based VQA over COCO 2017 images.

Files: `aokvqa_v1p0_{train,val,test}.json` in `root` (or a save_to_disk directory or hub name
in the same schema; read with HF `datasets`), images at
`coco_dir/{split}2017/{image_id:012d}.jpg` (the official `get_coco_path`). Each row has
question, choices, correct_choice_idx, direct_answers (10) and rationales (3), which are the
chain-of-thought steps for CoT and Coconut training (MultiCoCo).

Scoring (`scorer="official"`, the default) follows the official evaluation (allenai/aokvqa,
evaluation/eval_predictions.py) rule for rule, on the prediction = the text after the last
`###` (stripped): multiple choice scores 1 only when the prediction is exactly the text of the
correct choice (anything that is not a choice, a letter "B" included, scores 0); direct answer
scores min(1, exact string matches among the 10 direct answers / 3); the split's DA mean leaves
out the questions marked `difficult_direct_answer` (the MC mean keeps every question).
`scorer="lenient"` is a looser, non-comparable variant (case, punctuation, "the answer is",
leading letters, a single contained choice); results.json records which scorer produced a
figure.
"""

from __future__ import annotations

import os
import re
from typing import Iterable

from latent_jax.data import hf_datasets

LETTERS = "ABCD"
SCORERS = ("official", "lenient")
ANSWER_DELIMITER = "###"  # CoT / Coconut targets: rationale steps, then "### answer"


def final_answer(response: str) -> str:
    """The part of a response after its last ANSWER_DELIMITER (the whole response when it has
    none), so a rationale that mentions another option does not decide the score."""
    return response.rsplit(ANSWER_DELIMITER, 1)[1].strip() if ANSWER_DELIMITER in response else response


def load_rows(root: str, split: str = "val", config_key: str = "data.path") -> list[dict]:
    """All rows of `split`, read with HF `datasets` from `root/aokvqa_v1p0_{split}.json`, a
    save_to_disk directory, or a hub name (where a network exists) whose rows keep the v1p0
    schema (image_id, to find the COCO image)."""
    path = os.path.join(root or "", f"aokvqa_v1p0_{split}.json")
    if hf_datasets.is_hub_name(root):
        ds, source = hf_datasets.load_hub(root, split, config_key), root
    else:
        ds = hf_datasets.saved_split(root, split, config_key) if root and os.path.isdir(root) else None
        source = root
        if ds is None:
            if not root or not os.path.exists(path):
                raise FileNotFoundError(
                    f"A-OKVQA file {path} not found: set --config.{config_key} to the directory with "
                    "aokvqa_v1p0_*.json (https://prior-datasets.s3.us-east-2.amazonaws.com/aokvqa/aokvqa_v1p0.tar.gz) "
                    "and --config.data.coco_dir to COCO 2017 (train2017/, val2017/)"
                )
            ds, source = hf_datasets.load_files("json", [path]), path
    if len(ds) and "question" not in ds.column_names:
        raise ValueError(f"{source} is not in the A-OKVQA schema (no 'question' field); set --config.{config_key}")
    if len(ds) and "image_id" not in ds.column_names:
        raise ValueError(f"{source} has no image_id field (rows with embedded images are not supported); set "
                         f"--config.{config_key} to the A-OKVQA v1p0 JSON directory and data.coco_dir to COCO 2017")
    return ds.to_list()


def image_path(coco_dir: str, split: str, image_id: int) -> str:
    return os.path.join(coco_dir, f"{split}2017", f"{int(image_id):012d}.jpg")


def format_question(row: dict, multiple_choice: bool = True) -> str:
    q = f"Question: {row['question']}"
    if multiple_choice:
        q += "".join(f"\n{l}. {c}" for l, c in zip(LETTERS, row["choices"]))
    return q + "\n"


def cot_steps(row: dict) -> list[str]:
    """Rationales as reasoning steps (one step each)."""
    return [r.strip() for r in row.get("rationales", []) if r and r.strip()]


def answer_text(row: dict) -> str:
    return row["choices"][int(row["correct_choice_idx"])]


def check_scorer(scorer: str, config_key: str = "eval.scorer") -> str:
    """`scorer` if it is one of SCORERS, else a one-line ValueError naming the config key."""
    if scorer not in SCORERS:
        raise ValueError(f"config.{config_key}={scorer!r} is not an A-OKVQA scorer; use "
                         f"--config.{config_key}=official (the official evaluation's exact strings) or lenient")
    return scorer


def _norm(s: str) -> str:
    s = (s or "").lower().strip()
    s = re.sub(r"^(the answer is|answer:|###)\s*", "", s).strip()
    return s.strip(" .!?\"'")


def predicted_choice(response: str, choices: list[str]) -> int | None:
    """Choice index of a response under the lenient rules: a choice's text (case and outer
    punctuation ignored), a leading letter standing alone ('B', 'B.', '(B)', 'B) text'; not the
    'd' of 'd.c.'), or the single choice contained in it as whole words."""
    r = _norm(response)
    for i, c in enumerate(choices):
        if r == _norm(c):
            return i
    m = re.match(r"^\(?([a-d])\)?[\.\):]?(?:\s|$)", r)
    if m:
        return "abcd".index(m.group(1))
    hits = [i for i, c in enumerate(choices) if _norm(c) and re.search(rf"\b{re.escape(_norm(c))}\b", r)]
    return hits[0] if len(hits) == 1 else None


def mc_correct(response: str, row: dict, scorer: str = "official") -> int:
    """1 when the prediction answers the row's multiple-choice question, else 0. official: the
    prediction (stripped) is exactly the correct choice's text; lenient: predicted_choice names
    the correct index."""
    if check_scorer(scorer) == "official":
        return int((response or "").strip() == row["choices"][int(row["correct_choice_idx"])])
    return int(predicted_choice(response, row["choices"]) == int(row["correct_choice_idx"]))


def direct_answer_accuracy(response: str, row: dict, scorer: str = "official") -> float:
    """min(1, matches / 3) against the 10 direct answers. official: exact string matches of the
    prediction (stripped). lenient: matches of the normalised prediction; only a prediction that
    is no direct answer itself is read as the choice it names (so "light blue" stays "light blue")."""
    answers = row.get("direct_answers", [])
    if check_scorer(scorer) == "official":
        pred = (response or "").strip()
        return min(1.0, sum(pred == a for a in answers) / 3.0)
    pred = _norm(response)
    if not any(pred == _norm(a) for a in answers):
        i = predicted_choice(response, row["choices"])
        if i is not None:
            pred = _norm(row["choices"][i])
    n = sum(pred == _norm(a) for a in answers)
    return min(1.0, n / 3.0)


def score(response: str, row: dict, scorer: str = "official") -> dict:
    """One response's scores: mc_correct, da_accuracy (of its final answer, the text after the
    last ANSWER_DELIMITER) and the row's difficult_direct_answer flag, which results() needs."""
    ans = final_answer(response)
    return {"mc_correct": mc_correct(ans, row, scorer), "da_accuracy": direct_answer_accuracy(ans, row, scorer),
            "difficult_direct_answer": bool(row.get("difficult_direct_answer", False))}


def results(records: Iterable[dict], scorer: str = "official") -> dict:
    """Split results: MC accuracy over every record; DA accuracy over the records not marked
    difficult_direct_answer (the official DA evaluation leaves them out; `da_n` counts the rest)."""
    records = list(records)
    n = max(len(records), 1)
    da = [r["da_accuracy"] for r in records if not r.get("difficult_direct_answer", False)]
    mc = sum(r["mc_correct"] for r in records) / n
    return {
        "accuracy": mc,
        "mc_accuracy": mc,
        "da_accuracy": sum(da) / max(len(da), 1),
        "n": len(records),
        "da_n": len(da),
        "scorer": check_scorer(scorer),
    }
