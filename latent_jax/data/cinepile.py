"""CinePile (tomg-group-umd/cinepile): long-form video multiple-choice QA.

Reads the HF dataset with `datasets` (latent_jax.data.hf_datasets) from a local directory
(`{split}.parquet`, `{split}-*.parquet`, `data/{split}-*.parquet`, or a `save_to_disk`
directory) or, where a network exists, the hub name `tomg-group-umd/cinepile`. Clips live
in `clips_dir/<youtube id>.mp4` (by default `<local directory>/clips`; set it for a hub
name), keyed by `yt_clip_link`. `prepare` fetches them with yt-dlp
where a network allows and records the failures in `clips_dir/failed.json`:

    python -m latent_jax.data.cinepile prepare --root DIR --split test --max_videos 100

Missing clips, and clips that do not open and decode, are counted and skipped (or answered
from subtitles only, missing_clip='subtitles'); unreadable ones are reported by path, and more
than a set fraction of them stops the run, as does a split with no usable clip at all.

Scoring (`score_response`, scorer="official", the default) reproduces the official CinePile
evaluation (lmms-eval's tasks/cinepile/utils.py, contributed by CinePile's authors) verdict for
verdict, quirks included: asterisks removed, a bare letter A-E is the option; otherwise the
first "Answer:" followed by one letter, an optional ")" and "." gives the option and the rest
of that line its text. With a letter, it must be the key's and any text must equal the key
text ignoring case; without one, the whole response must equal the key text ignoring case.
"(B)", "B) text" or "the man." are wrong. scorer="lenient" is a looser, non-comparable
variant (leading letters, substrings); results.json records which scorer produced a figure.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import re
import subprocess
import sys
from collections import defaultdict
from typing import Any, Iterable

from latent_jax.data import hf_datasets
from latent_jax.data.video import VideoError, check_readable

log = logging.getLogger(__name__)

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
def _split_files(root: str, split: str) -> list[str]:
    for p in (f"{split}.parquet", f"{split}-*.parquet", f"data/{split}-*.parquet", f"{split}/*.parquet"):
        fs = sorted(glob.glob(os.path.join(root, p)))
        if fs:
            return fs
    return []


def load_rows(root: str, split: str = "test", config_key: str = "data.path") -> list[dict]:
    """All rows of `split` as dicts with the CinePile fields, read with HF `datasets` from a
    local directory (parquet files or a save_to_disk directory) or a hub name such as
    tomg-group-umd/cinepile (where a network exists)."""
    if hf_datasets.is_hub_name(root):
        ds, source = hf_datasets.load_hub(root, split, config_key), root
    else:
        if not root or not os.path.isdir(root):
            raise FileNotFoundError(
                f"CinePile directory {root!r} not found: set --config.{config_key} to a local copy of "
                f"tomg-group-umd/cinepile (parquet files), e.g. huggingface-cli download tomg-group-umd/cinepile "
                f"--repo-type dataset --local-dir DIR, then {PREPARE_HINT.format(root='DIR', split=split)}"
            )
        ds = hf_datasets.saved_split(root, split, config_key)
        source = root
        if ds is None:
            files = _split_files(root, split)
            if not files:
                raise FileNotFoundError(f"no {split} split in {root} (looked for {split}.parquet, "
                                        f"data/{split}-*.parquet, a save_to_disk directory); set --config.{config_key}")
            ds, source = hf_datasets.load_files("parquet", files), files[0]
    missing = [k for k in ("question", "choices", "answer_key_position", "yt_clip_link") if k not in ds.column_names]
    if missing:
        raise ValueError(f"{source} lacks CinePile fields {missing}; is this the cinepile dataset? "
                         f"(set --config.{config_key})")
    return ds.to_list()


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
SCORERS = ("official", "lenient")

# The official parser (lmms-eval tasks/cinepile/utils.py, `normalize_string`), rule for rule:
# after removing asterisks and outer whitespace, a response that is one letter A-E (any case)
# is that option; otherwise the first "answer:" (any case), any whitespace (newlines too), ONE
# letter A-E, an optional ")", an optional "." and any whitespace give the option, and the
# rest of that line (stripped) its text. The letter is not required to stand alone, so
# "Answer: Because ..." reads as option B with text "ecause ...", exactly as officially.
_OFFICIAL_ANSWER = re.compile(r"answer:\s*([a-e])\)?\.?\s*([^\n]*)", re.IGNORECASE)


def parse_official(response: str) -> tuple[str | None, str]:
    """(option letter or None, option text) as the official CinePile evaluation reads them;
    without a letter the text is the whole (de-asterisked, stripped) response."""
    s = (response or "").replace("*", "").strip()
    if re.fullmatch(r"[A-E]", s, re.IGNORECASE):
        return s.upper(), ""
    m = _OFFICIAL_ANSWER.search(s)
    if m is None:
        return None, s
    return m.group(1).upper(), m.group(2).strip()


def score_official(response: str, answer_key_position: int, answer_key: str) -> int:
    """The official verdict: with a letter, it must be the key's, and a text, when both the
    response and the key have one, must equal the key text ignoring case (nothing else is
    normalised: "the man." is not "The man"); without a letter, the whole response must equal
    the key text ignoring case."""
    letter, text = parse_official(response)
    key_text = answer_key or ""
    if letter is None:
        return int(key_text.lower() == text.lower())
    if letter != LETTERS[int(answer_key_position)]:
        return 0
    return int(not key_text or not text or key_text.lower() == text.lower())


def parse_lenient(response: str) -> tuple[str | None, str]:
    """(option letter or None, option text), accepting more shapes than the official parser:
    "(B)", "B)", "B." and "B: text" at the start, and text past the end of the answer line."""
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


def score_lenient(response: str, answer_key_position: int, answer_key: str) -> int:
    """A looser verdict than the official one (not comparable with the leaderboard): a letter
    must be the key's and its text, if any, may contain the key text or be contained in it;
    without a letter the key text must appear in the response. Trailing periods are ignored."""
    letter, text = parse_lenient(response)
    key = (answer_key or "").strip().lower().rstrip(".")
    text_l = text.strip().lower().rstrip(".")
    if letter is not None:
        if letter != LETTERS[int(answer_key_position)]:
            return 0
        return int(not text_l or key in text_l or text_l in key)
    return int(bool(key) and key in text_l)


def check_scorer(scorer: str, config_key: str = "eval.scorer") -> str:
    """`scorer` if it is one of SCORERS, else a one-line ValueError naming the config key."""
    if scorer not in SCORERS:
        raise ValueError(f"config.{config_key}={scorer!r} is not a CinePile scorer; use "
                         f"--config.{config_key}=official (the leaderboard's rules) or lenient")
    return scorer


def score_response(response: str, answer_key_position: int, answer_key: str, scorer: str = "official") -> int:
    """1 if the response answers the question with key `answer_key_position` / `answer_key`,
    else 0, under `scorer`: "official" (the official CinePile evaluation, quirks included; the
    figure comparable with published results) or "lenient" (score_lenient)."""
    fn = score_official if check_scorer(scorer) == "official" else score_lenient
    return fn(response, answer_key_position, answer_key)


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


def default_clips_dir(root: str, clips_dir: str = "", flag: str = "--config.data.clips_dir") -> str:
    """`clips_dir` when set, else `root/clips` for a local root; a hub name needs it set."""
    if clips_dir:
        return clips_dir
    if hf_datasets.is_hub_name(root):
        raise ValueError(f"{root!r} is a hub dataset, which has no local directory for clips: "
                         f"set {flag}=DIR (where prepare puts the clips)")
    return os.path.join(root, "clips")


def prepare_command(root: str, split: str = "test", clips_dir: str = "", max_videos: int = 0,
                    use_hard_split: bool = False, visual_reliance: bool = False) -> str:
    """The `prepare` command line that downloads the clips a run with these settings uses."""
    cmd = PREPARE_HINT.format(root=root, split=split)
    if clips_dir and os.path.abspath(clips_dir) != os.path.abspath(os.path.join(root, "clips")):
        cmd += f" --clips_dir {clips_dir}"
    if max_videos and max_videos > 0:
        cmd += f" --max_videos {int(max_videos)}"
    if use_hard_split:
        cmd += " --use_hard_split"
    if visual_reliance:
        cmd += " --visual_reliance"
    return cmd


def build_examples(rows: list[dict], clips_dir: str, fallback: str = "skip", max_unreadable: float = 0.1,
                   prepare_cmd: str = "", config_prefix: str = "data.") -> tuple[list[VideoQAExample], dict]:
    """Attach clips. A missing clip, or one that does not open and decode (video.check_readable),
    is counted and skipped, or (fallback='subtitles') kept without video; unreadable clips are
    logged by path and listed in stats['unreadable'].

    Errors (one line each): no rows; no example left because every clip is missing or
    unreadable (names `prepare_cmd`, the command that downloads them); more than
    `max_unreadable` (a fraction) of the distinct clips unreadable. Returns (examples, stats)."""
    if fallback not in ("skip", "subtitles"):
        raise ValueError(f"config.{config_prefix}missing_clip={fallback!r}; use skip or subtitles")
    if not 0.0 <= float(max_unreadable) <= 1.0:
        raise ValueError(f"config.{config_prefix}max_unreadable_fraction={max_unreadable!r}; use a fraction in [0, 1]")
    if not rows:
        raise ValueError(f"no questions left to use; check --config.{config_prefix}use_hard_split, "
                         f"{config_prefix}visual_reliance and {config_prefix}max_videos")
    stats: dict[str, Any] = {"rows": len(rows), "missing_clips": 0, "unreadable_clips": 0, "skipped": 0,
                             "subtitles_only": 0, "unreadable": {}}
    status: dict[str, str] = {}  # path -> "" (readable) | "missing" | reason it is unreadable
    out = []
    for r in rows:
        p = os.path.join(clips_dir, clip_id(r["yt_clip_link"]) + ".mp4")
        if p not in status:
            if not os.path.exists(p):
                status[p] = "missing"
            else:
                try:
                    check_readable(p)
                    status[p] = ""
                except VideoError as e:
                    status[p] = str(e)
                    stats["unreadable"][p] = str(e)
                    log.warning("skipping unreadable clip %s: %s", p, e)
        if status[p]:
            stats["missing_clips" if status[p] == "missing" else "unreadable_clips"] += 1
            if fallback == "skip":
                stats["skipped"] += 1
                continue
            stats["subtitles_only"] += 1
            p = None
        out.append(VideoQAExample(row=r, clip=p, answer=answer_text(r)))
    bad = stats["unreadable"]
    present = sum(v != "missing" for v in status.values())
    hint = f"`{prepare_cmd}`" if prepare_cmd else "`python -m latent_jax.data.cinepile prepare`"
    if bad and len(bad) > max_unreadable * len(status):
        why = " ".join(next(iter(bad.values())).split())
        raise ValueError(
            f"{len(bad)} of {len(status)} clips in {clips_dir} are unreadable, more than "
            f"config.{config_prefix}max_unreadable_fraction={max_unreadable} (first: {why}); delete them and run "
            f"{hint} again, or raise --config.{config_prefix}max_unreadable_fraction")
    if not out:
        raise FileNotFoundError(
            f"none of the {len(status)} clips these {len(rows)} questions need is usable in {clips_dir} "
            f"({len(status) - present} missing, {len(bad)} unreadable): download them with {hint}, "
            f"or set --config.{config_prefix}missing_clip=subtitles to answer from subtitles only")
    return out, stats


# ------------------------------------------------------------------------ prepare
def prepare(root: str, split: str = "test", clips_dir: str | None = None, max_videos: int = 0,
            use_hard_split: bool = False, visual_reliance: bool = False) -> dict:
    """Download the clips of `split` with yt-dlp (mp4); failures go to clips_dir/failed.json."""
    clips_dir = default_clips_dir(root, clips_dir or "", "--clips_dir")
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
