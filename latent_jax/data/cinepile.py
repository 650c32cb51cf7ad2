"""CinePile (tomg-group-umd/cinepile): long-form video multiple-choice QA.

Reads the HF dataset from a local directory: `{split}.parquet`, `{split}-*.parquet`,
`data/{split}-*.parquet`, or a `save_to_disk` directory (`{split}/data-*.arrow`). Clips live
in `clips_dir/<youtube id>.mp4`, keyed by `yt_clip_link`. `prepare` fetches them with yt-dlp
where a network allows and records the failures in `clips_dir/failed.json`:

    python -m latent_jax.data.cinepile prepare --root DIR --split test --max_videos 100

Scoring follows the official CinePile evaluation: the response is normalised (asterisks
removed), a bare letter A-E is the option; otherwise "Answer: X) text" (or a leading
"X) text" / "X. text") gives the option letter and text. A response with a letter is right
when the letter is the key's and its text, if any, does not contradict the key (the key text
is contained in it or it in the key text); a response with no letter is right when the key's
text appears in it. Everything else, including no answer, is wrong.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from typing import Any, Iterable

FIELDS = (
    "movie_name", "year", "genre", "yt_clip_title", "yt_clip_link", "movie_scene", "subtitles", "question",
    "choices", "answer_key", "answer_key_position", "question_category", "hard_split", "visual_reliance",
)
LETTERS = "ABCDE"
PROMPT = (
    "You will be provided with subtitles from a specific scene of a movie and a few frames from that scene. "
    "After going through the movie scene and seeing the frames, please answer the question that follows. "
    "The question will have five possible answers labeled A, B, C, D, and E, please try to provide the most "
    "probable answer in your opinion. Your output should be just one of A,B,C,D,E and nothing else.\n"
    "**Output Format:**\n**Answer:** <Option_key>\n"
)
PREPARE_HINT = "python -m latent_jax.data.cinepile prepare --root {root} --split {split}"


def clip_id(link: str) -> str:
    """The YouTube video id of a clip link (watch?v=ID, youtu.be/ID, shorts/ID)."""
    m = re.search(r"(?:v=|youtu\.be/|shorts/)([A-Za-z0-9_-]{6,})", link or "")
    if not m:
        raise ValueError(f"cannot find a YouTube id in yt_clip_link={link!r}")
    return m.group(1)


def _truthy(x: Any) -> bool:
    if isinstance(x, str):
        return x.strip().lower() in ("true", "1", "yes")
    return bool(x)


# ------------------------------------------------------------------------ reading
def _split_files(root: str, split: str) -> tuple[str, list[str]]:
    pats = [f"{split}.parquet", f"{split}-*.parquet", f"data/{split}-*.parquet", f"{split}/*.parquet"]
    for p in pats:
        fs = sorted(glob.glob(os.path.join(root, p)))
        if fs:
            return "parquet", fs
    fs = sorted(glob.glob(os.path.join(root, split, "data-*.arrow")))
    if fs:
        return "arrow", fs
    return "", []


def load_rows(root: str, split: str = "test", config_key: str = "data.path") -> list[dict]:
    """All rows of `split` as dicts with the CinePile fields."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not root or not os.path.isdir(root):
        raise FileNotFoundError(
            f"CinePile directory {root!r} not found: set --config.{config_key} to a local copy of "
            f"tomg-group-umd/cinepile (parquet files), e.g. huggingface-cli download tomg-group-umd/cinepile "
            f"--repo-type dataset --local-dir DIR, then {PREPARE_HINT.format(root='DIR', split=split)}"
        )
    kind, files = _split_files(root, split)
    if not files:
        raise FileNotFoundError(f"no {split} split in {root} (looked for {split}.parquet, data/{split}-*.parquet, "
                                f"{split}/data-*.arrow); set --config.{config_key}")
    rows: list[dict] = []
    for f in files:
        if kind == "parquet":
            t = pq.read_table(f)
        else:
            with pa.memory_map(f) as src:
                try:
                    t = pa.ipc.open_stream(src).read_all()
                except pa.ArrowInvalid:
                    t = pa.ipc.open_file(src).read_all()
        rows.extend(t.to_pylist())
    missing = [k for k in ("question", "choices", "answer_key_position", "yt_clip_link") if rows and k not in rows[0]]
    if missing:
        raise ValueError(f"{files[0]} lacks CinePile fields {missing}; is this the cinepile dataset?")
    return rows


def filter_rows(rows: list[dict], use_hard_split: bool = False, visual_reliance: bool = False,
                max_videos: int = 0) -> list[dict]:
    """Keep hard-split / visually reliant questions when asked, then the rows of the first
    `max_videos` distinct clips (0 = all)."""
    out = [r for r in rows if (not use_hard_split or _truthy(r.get("hard_split")))
           and (not visual_reliance or _truthy(r.get("visual_reliance")))]
    if max_videos and max_videos > 0:
        seen: list[str] = []
        kept = []
        for r in out:
            link = r["yt_clip_link"]
            if link not in seen:
                if len(seen) >= max_videos:
                    continue
                seen.append(link)
            kept.append(r)
        out = kept
    return out


def format_question(row: dict) -> str:
    """Question followed by its options lettered A-E."""
    q = row["question"]
    for letter, opt in zip(LETTERS, row["choices"]):
        q += f"\n- {letter}) {opt}"
    return q


def format_prompt(row: dict, with_subtitles: bool = True, media: str = "") -> str:
    """The CinePile prompt: instructions, `media` (image placeholders), scene description /
    subtitles, question and lettered options."""
    parts = [PROMPT]
    if media:
        parts.append(media)
    if with_subtitles:
        parts.append(f"**Subtitles:**\n{row.get('subtitles') or row.get('movie_scene') or ''}\n")
    parts.append(f"Question: {format_question(row)}\n")
    return "\n".join(parts)


def answer_text(row: dict) -> str:
    """Target completion: 'Answer: X) text'."""
    k = int(row["answer_key_position"])
    return f"Answer: {LETTERS[k]}) {row['choices'][k]}"


# ------------------------------------------------------------------------ scoring
def normalize_response(response: str) -> tuple[str | None, str]:
    """(option letter or None, option text) of a model response."""
    s = (response or "").replace("*", "").strip()
    if re.fullmatch(r"[A-E]", s, re.IGNORECASE):
        return s.upper(), ""
    m = re.search(r"Answer:\s*\(?([A-E])\)?(?:[\.\):]|\s|$)\s*(.*)", s, re.IGNORECASE | re.DOTALL)
    if m:
        return m.group(1).upper(), m.group(2).strip()
    m = re.match(r"\(?([A-E])[\)\.:](?:\s+|$)(.*)", s, re.IGNORECASE | re.DOTALL)
    if m:
        return m.group(1).upper(), m.group(2).strip()
    return None, s


def score_response(response: str, answer_key_position: int, answer_key: str) -> int:
    """1 if the response answers the key correctly (official CinePile semantics), else 0."""
    letter, text = normalize_response(response)
    key_letter = LETTERS[int(answer_key_position)]
    key = answer_key.strip().lower().rstrip(".")
    text_l = text.strip().lower().rstrip(".")
    if letter is not None:
        if letter != key_letter:
            return 0
        return int(not text_l or key in text_l or text_l in key)
    return int(bool(key) and key in text_l)


def results(records: Iterable[dict]) -> dict:
    """results.json: accuracy plus accuracy by question_category, hard_split and visual_reliance.
    Each record holds correct (0/1) and the row's question_category, hard_split, visual_reliance."""
    records = list(records)
    out: dict[str, Any] = {"accuracy": (sum(r["correct"] for r in records) / len(records)) if records else 0.0,
                           "n": len(records)}
    for key in ("question_category", "hard_split", "visual_reliance"):
        groups: dict[str, list[int]] = defaultdict(list)
        for r in records:
            groups[str(r.get(key))].append(int(r["correct"]))
        out[f"accuracy_by_{key}"] = {k: sum(v) / len(v) for k, v in sorted(groups.items())}
    return out


# ----------------------------------------------------------------------- examples
@dataclasses.dataclass
class VideoQAExample:
    """One question: prompt text pieces, target, clip path (None = subtitles only), row."""

    row: dict
    clip: str | None
    answer: str


def build_examples(rows: list[dict], clips_dir: str, fallback: str = "skip") -> tuple[list[VideoQAExample], dict]:
    """Attach clips; a missing clip is counted and skipped, or (fallback='subtitles') kept
    without video. Returns (examples, stats)."""
    if fallback not in ("skip", "subtitles"):
        raise ValueError(f"missing_clip={fallback!r}; use skip or subtitles")
    out, stats = [], {"rows": len(rows), "missing_clips": 0, "skipped": 0, "subtitles_only": 0}
    for r in rows:
        p = os.path.join(clips_dir, clip_id(r["yt_clip_link"]) + ".mp4")
        if not os.path.exists(p):
            stats["missing_clips"] += 1
            if fallback == "skip":
                stats["skipped"] += 1
                continue
            stats["subtitles_only"] += 1
            p = None
        out.append(VideoQAExample(row=r, clip=p, answer=answer_text(r)))
    return out, stats


# ------------------------------------------------------------------------ prepare
def prepare(root: str, split: str = "test", clips_dir: str | None = None, max_videos: int = 0,
            use_hard_split: bool = False, visual_reliance: bool = False) -> dict:
    """Download the clips of `split` with yt-dlp (mp4); failures go to clips_dir/failed.json."""
    clips_dir = clips_dir or os.path.join(root, "clips")
    os.makedirs(clips_dir, exist_ok=True)
    rows = filter_rows(load_rows(root, split), use_hard_split, visual_reliance, max_videos)
    links = list(dict.fromkeys(r["yt_clip_link"] for r in rows))
    failed_path = os.path.join(clips_dir, "failed.json")
    failed = json.load(open(failed_path)) if os.path.exists(failed_path) else {}
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = lambda x, **k: x  # noqa: E731
    ok = 0
    for link in tqdm(links, desc="clips"):
        vid = clip_id(link)
        out = os.path.join(clips_dir, vid + ".mp4")
        if os.path.exists(out):
            ok += 1
            continue
        cmd = [sys.executable, "-m", "yt_dlp", "-f", "mp4/best", "-o", out, "--no-playlist", "--quiet", link]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            err = res.stderr.strip().splitlines()[-1] if res.returncode else ""
        except (OSError, subprocess.TimeoutExpired) as e:
            err = str(e)
        if err or not os.path.exists(out):
            failed[link] = err or "yt-dlp produced no file"
        else:
            failed.pop(link, None)
            ok += 1
    with open(failed_path, "w") as f:
        json.dump(failed, f, indent=1)
    summary = {"clips": len(links), "downloaded": ok, "failed": len(failed), "failed_file": failed_path}
    print(json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m latent_jax.data.cinepile")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="download the clips of a split with yt-dlp")
    p.add_argument("--root", required=True, help="local directory with the cinepile parquet files")
    p.add_argument("--split", default="test")
    p.add_argument("--clips_dir", default=None)
    p.add_argument("--max_videos", type=int, default=0)
    p.add_argument("--use_hard_split", action="store_true")
    p.add_argument("--visual_reliance", action="store_true")
    a = ap.parse_args(argv)
    try:
        import yt_dlp  # noqa: F401
    except ImportError:
        print("error: yt-dlp is not installed; pip install yt-dlp (network access to YouTube is needed)", file=sys.stderr)
        return 2
    try:
        prepare(a.root, a.split, a.clips_dir, a.max_videos, a.use_hard_split, a.visual_reliance)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
