"""Streaming conversation data: chat templates of the ported families, the stop / noise mix
builder, and a synthetic video-stream task a tiny model learns on CPU.

A conversation is a list of messages {"role": "system" | "user" | "assistant" | "frames",
"content": str}; "frames" are stream input (video frame tokens) placed inline, outside any
chat turn, as VideoLLM-online interleaves frames and turns. An assistant message with
"interrupted": True was cut off mid-answer (rendered without its end token).

    template = CHAT_TEMPLATES["chatml"]                  # Qwen2 / InternVL3
    samples = mix_stop_noise(samples, n_stop=10_000, n_noise=10_000, seed=0)
    segments = render(sample["messages"], template)      # [(text, is_target), ...]

`mix_stop_noise` follows the streaming-LLM notes (seed ominous_streaming_llm, rows +10k-noise
and +10k-stop): a *noise* sample inserts a statement that is not a query ("So, this video is
about the cooking.") whose reply is empty (the end token right after the assistant header);
a *stop* sample cuts an answer after a few words and adds an interruption ("sorry to
interrupt") whose reply is the end token at once. The rest of the set is kept as it is, so
real questions are still answered.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Iterable, Sequence

STOP_PHRASES = ("sorry to interrupt", "stop please", "ok that is enough", "wait stop", "hold on stop talking")
NOISE_PHRASES = ("so this video is about colors", "i like this video", "the weather is nice today",
                 "this looks like a nice scene", "my friend is watching too", "so this video is about the cooking")


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """How one family wraps turns. A reply is assistant_prefix + content + end (+ after_end);
    an empty reply (silence, or the answer to an interruption) is assistant_prefix + end."""

    name: str
    system: str  # format with {content}
    user: str  # format with {content}
    assistant_prefix: str
    end: str  # the end-of-turn token the model emits (the session's stop token)
    after_end: str = ""
    bos: str = ""

    def user_turn(self, content: str) -> str:
        return self.user.format(content=content)


CHAT_TEMPLATES = {
    # Qwen2 / Qwen2.5 and InternVL3 (whose language model is Qwen2.5)
    "chatml": ChatTemplate("chatml", "<|im_start|>system\n{content}<|im_end|>\n",
                           "<|im_start|>user\n{content}<|im_end|>\n", "<|im_start|>assistant\n", "<|im_end|>", "\n"),
    # Phi-3 / Phi-3.5 / Phi-4-mini
    "phi3": ChatTemplate("phi3", "<|system|>\n{content}<|end|>\n", "<|user|>\n{content}<|end|>\n",
                         "<|assistant|>\n", "<|end|>", "\n"),
    # Phi-4-multimodal (no newlines between tags)
    "phi4mm": ChatTemplate("phi4mm", "<|system|>{content}<|end|>", "<|user|>{content}<|end|>", "<|assistant|>",
                           "<|end|>"),
    # Llama 3.x
    "llama3": ChatTemplate("llama3", "<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
                           "<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
                           "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>",
                           bos="<|begin_of_text|>"),
    # Mistral instruct ([INST] ... [/INST] answer</s>)
    "mistral": ChatTemplate("mistral", "{content}\n\n", "[INST] {content} [/INST]", "", "</s>", bos="<s>"),
    # the synthetic stream task: ChatML's tags as whitespace-separated symbols
    "stream_demo": ChatTemplate("stream_demo", "<|im_start|> system {content} <|im_end|> ",
                                "<|im_start|> user {content} <|im_end|> ", "<|im_start|> assistant ", "<|im_end|>",
                                " "),
}
FAMILY_TEMPLATES = {"qwen2": "chatml", "internvl": "chatml", "phi3": "phi3", "phi4mm": "phi4mm", "llama": "llama3",
                    "mistral": "mistral"}


def template_for(name_or_family: str) -> ChatTemplate:
    """The template by its name or by a model family (qwen2, internvl, phi3, phi4mm, llama, mistral)."""
    key = FAMILY_TEMPLATES.get(name_or_family, name_or_family)
    if key not in CHAT_TEMPLATES:
        raise ValueError(f"no chat template {name_or_family!r}; use one of "
                         f"{', '.join(sorted(set(CHAT_TEMPLATES) | set(FAMILY_TEMPLATES)))}")
    return CHAT_TEMPLATES[key]


def render(messages: Sequence[dict], template: ChatTemplate) -> list[tuple[str, bool]]:
    """[(text, is_target)]: the conversation as text pieces; the assistant's content and end
    token are targets (what the model must produce), everything else is input."""
    out: list[tuple[str, bool]] = [(template.bos, False)] if template.bos else []
    for m in messages:
        role, content = m["role"], m.get("content", "")
        if role == "frames":
            out.append((content + " ", False))
        elif role == "system":
            out.append((template.system.format(content=content), False))
        elif role == "user":
            out.append((template.user_turn(content), False))
        elif role == "assistant":
            out.append((template.assistant_prefix, False))
            if m.get("interrupted"):
                out.append((content + " ", False))  # cut off: spoken, no end token
                continue
            if content:
                out.append((content + " ", True))
            out.append((template.end, True))
            if template.after_end:
                out.append((template.after_end, False))
        else:
            raise ValueError(f"message role {role!r}; use system, user, assistant or frames")
    return [(t, y) for t, y in out if t]


def tokenize(segments: Sequence[tuple[str, bool]], encode) -> tuple[list[int], list[int]]:
    """(ids, target mask) of rendered segments; encode(text) -> ids (no special tokens added)."""
    ids, tgt = [], []
    for text, is_target in segments:
        piece = list(encode(text))
        ids += piece
        tgt += [int(is_target)] * len(piece)
    return ids, tgt


# ----------------------------------------------------------------------- the mix
def _user_turns(messages: Sequence[dict]) -> list[int]:
    return [i for i, m in enumerate(messages) if m["role"] == "user"]


def make_noise(sample: dict, rng: random.Random, phrases: Sequence[str] = NOISE_PHRASES) -> dict:
    """`sample` with a statement (not a query) and its empty reply inserted before one of its
    user turns (after the frames that precede it)."""
    msgs = list(sample["messages"])
    users = _user_turns(msgs) or [len(msgs)]
    at = rng.choice(users)
    noise = [{"role": "user", "content": rng.choice(phrases), "kind": "noise"},
             {"role": "assistant", "content": "", "kind": "noise"}]
    return {**sample, "messages": msgs[:at] + noise + msgs[at:], "kind": "noise"}


def make_stop(sample: dict, rng: random.Random, phrases: Sequence[str] = STOP_PHRASES) -> dict | None:
    """`sample` cut inside one of its answers of >= 2 words (1 .. n-1 words spoken), then an
    interruption whose reply is the end token at once; None when no answer is long enough."""
    msgs = list(sample["messages"])
    long = [i for i, m in enumerate(msgs) if m["role"] == "assistant" and len(m.get("content", "").split()) >= 2]
    if not long:
        return None
    i = rng.choice(long)
    words = msgs[i]["content"].split()
    k = rng.randint(1, len(words) - 1)
    cut = {**msgs[i], "content": " ".join(words[:k]), "interrupted": True}
    stop = [{"role": "user", "content": rng.choice(phrases), "kind": "stop"},
            {"role": "assistant", "content": "", "kind": "stop"}]
    return {**sample, "messages": msgs[:i] + [cut] + stop, "kind": "stop"}


def mix_stop_noise(samples: Sequence[dict], n_stop: int, n_noise: int, seed: int = 0,
                   stop_phrases: Sequence[str] = STOP_PHRASES, noise_phrases: Sequence[str] = NOISE_PHRASES,
                   shuffle: bool = True) -> list[dict]:
    """The samples plus n_stop stop samples and n_noise noise samples built from randomly
    drawn samples of the set (media keys and everything else kept), shuffled."""
    if n_stop < 0 or n_noise < 0:
        raise ValueError(f"n_stop={n_stop}, n_noise={n_noise}; counts must be >= 0")
    if not samples and (n_stop or n_noise):
        raise ValueError("mix_stop_noise got an empty instruction set; pass the samples to mix into")
    rng = random.Random(seed)
    out = [{**s, "kind": s.get("kind", "original")} for s in samples]
    stoppable = [s for s in samples if make_stop(s, random.Random(0), stop_phrases) is not None]
    if n_stop and not stoppable:
        raise ValueError("no sample has an answer of two or more words to interrupt; n_stop needs longer answers")
    out += [make_stop(rng.choice(stoppable), rng, stop_phrases) for _ in range(n_stop)]
    out += [make_noise(rng.choice(list(samples)), rng, noise_phrases) for _ in range(n_noise)]
    if shuffle:
        rng.shuffle(out)
    return out


# ------------------------------------------------------------ the synthetic stream task
COLORS = ("red", "green", "blue", "yellow", "black", "white", "purple", "orange")
NOW_QUERIES = ("what color is it now ?", "which color do you see ?", "tell me the color now ?")
LIST_QUERIES = ("list the last three colors ?", "what were the last three colors ?")
SYSTEM = "watch the stream and answer"


def frame_text(color: str) -> str:
    return f"<frame> {color}"


def synthetic_stream(rng: random.Random, turns: int = 3, max_gap: int = 3) -> dict:
    """One stream: a system prompt, then `turns` times: 1..max_gap frames (a colour each;
    the scene keeps its colour with probability 0.5) and a query about the frames so far,
    answered with the current colour or the last three colours."""
    msgs = [{"role": "system", "content": SYSTEM}]
    seen: list[str] = []
    color = rng.choice(COLORS)
    for t in range(turns):
        n = rng.randint(1, max_gap) + (2 if t == 0 else 0)  # three frames before a list query
        for _ in range(n):
            if rng.random() < 0.5:
                color = rng.choice(COLORS)
            seen.append(color)
        msgs.append({"role": "frames", "content": " ".join(frame_text(c) for c in seen[-n:])})
        if rng.random() < 0.5:
            msgs += [{"role": "user", "content": rng.choice(NOW_QUERIES), "kind": "query"},
                     {"role": "assistant", "content": seen[-1], "kind": "query"}]
        else:
            msgs += [{"role": "user", "content": rng.choice(LIST_QUERIES), "kind": "query"},
                     {"role": "assistant", "content": " ".join(seen[-3:]), "kind": "query"}]
    return {"messages": msgs, "kind": "original"}


def synthetic_streams(n: int, seed: int = 0, turns: int = 3) -> list[dict]:
    rng = random.Random(seed)
    return [synthetic_stream(rng, turns) for _ in range(n)]


def vocabulary_texts(template: ChatTemplate | None = None) -> list[str]:
    """Every symbol of the synthetic task once (for a whitespace tokenizer)."""
    t = template or CHAT_TEMPLATES["stream_demo"]
    words: list[str] = [t.system, t.user, t.assistant_prefix, t.end, "<frame>", SYSTEM]
    words += list(COLORS) + list(NOW_QUERIES) + list(LIST_QUERIES) + list(STOP_PHRASES) + list(NOISE_PHRASES)
    return [" ".join(words).replace("{content}", " ")]


def replies(sample: dict) -> Iterable[tuple[int, dict]]:
    """(index, message) of every assistant reply the model must produce (not the cut ones)."""
    for i, m in enumerate(sample["messages"]):
        if m["role"] == "assistant" and not m.get("interrupted"):
            yield i, m
