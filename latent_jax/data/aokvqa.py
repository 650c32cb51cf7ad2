"""A-OKVQA (v1p0): knowledge-based VQA over COCO 2017 images.

Files: `aokvqa_v1p0_{train,val,test}.json` in `root` (or a save_to_disk directory or hub name
in the same schema; read with HF `datasets`), images at
`coco_dir/{split}2017/{image_id:012d}.jpg` (the official `get_coco_path`). Each row has
question, choices, correct_choice_idx, direct_answers (10) and rationales (3), which are the
chain-of-thought steps for CoT and Coconut training (MultiCoCo).

Scoring (official): multiple-choice accuracy = predicted choice == correct choice;
direct-answer accuracy = min(1, #annotators who gave the prediction / 3).
"""

from __future__ import annotations

import os
import re
from typing import Iterable

from latent_jax.data import hf_datasets

LETTERS = "ABCD"
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


def _norm(s: str) -> str:
    s = (s or "").lower().strip()
    s = re.sub(r"^(the answer is|answer:|###)\s*", "", s).strip()
    return s.strip(" .!?\"'")


def predicted_choice(response: str, choices: list[str]) -> int | None:
    """Choice index of a response: an exact choice text, a leading letter 'B' / 'B.', or the
    single choice contained in it."""
    r = _norm(response)
    for i, c in enumerate(choices):
        if r == _norm(c):
            return i
    m = re.match(r"^\(?([a-d])\)?(?:[\.\):]|$)", r)
    if m:
        return "abcd".index(m.group(1))
    hits = [i for i, c in enumerate(choices) if _norm(c) and re.search(rf"\b{re.escape(_norm(c))}\b", r)]
    return hits[0] if len(hits) == 1 else None


def mc_correct(response: str, row: dict) -> int:
    return int(predicted_choice(response, row["choices"]) == int(row["correct_choice_idx"]))


def direct_answer_accuracy(response: str, row: dict) -> float:
    """min(1, matches / 3) against the 10 direct answers (on the normalised response, or on the
    choice it names)."""
    pred = _norm(response)
    i = predicted_choice(response, row["choices"])
    if i is not None:
        pred = _norm(row["choices"][i])
    n = sum(pred == _norm(a) for a in row.get("direct_answers", []))
    return min(1.0, n / 3.0)


def results(records: Iterable[dict]) -> dict:
    records = list(records)
    n = max(len(records), 1)
    return {
        "accuracy": sum(r["mc_correct"] for r in records) / n,
        "mc_accuracy": sum(r["mc_correct"] for r in records) / n,
        "da_accuracy": sum(r["da_accuracy"] for r in records) / n,
        "n": len(records),
    }
