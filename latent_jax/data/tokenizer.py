"""Tokenizers: a local HF tokenizer directory, or one trained on the training texts.

    load_tokenizer(dir)                 a local HF tokenizer dir (tokenizer.json / tokenizer_config.json)
    train_tokenizer(texts, out_dir, kind="bpe"|"word"|"whitespace")
                                        a small tokenizer for models trained from scratch,
                                        saved as an HF-loadable dir (bos/eos/pad set):
                                        byte-level BPE, word level (every word, with its
                                        leading space, and every punctuation run one token),
                                        or whitespace (every whitespace-separated symbol one
                                        token, decoded joined by single spaces: the graph-token
                                        format of latent_jax.data.prosqa_graph)
    add_coconut_tokens(tok)             adds <|start-latent|>, <|end-latent|>, <|latent|>
    resize_embeddings(params, config, new_vocab, ...)
                                        grows embed_tokens (and an untied lm_head) with rows
                                        initialised from an existing token's rows

The bpe and word kinds split text with the byte-level pre-tokenizer and decode with the byte-level
decoder, so they decode to exactly the text they encoded (words unseen in training become
`<unk>` in the word-level kind) and answers extracted from generated text compare exactly
with the gold answers. On generated data (a closed vocabulary of invented words) the
word-level kind gives every concept word and name exactly one id whatever the corpus
size (a small BPE splits rarer words into pieces).
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

import numpy as np

from latent_jax.latent.curriculum import END_LATENT, LATENT, START_LATENT, LatentTokenIds
from latent_jax.models.config import ModelConfig

COCONUT_TOKENS = (START_LATENT, END_LATENT, LATENT)
BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
TOKENIZER_KINDS = ("bpe", "word", "whitespace")


class TokenizerError(ValueError):
    """A tokenizer directory that cannot be used; the message names the fix."""


class Tokenizer:
    """A thin wrapper over a transformers fast tokenizer with the ids Coconut needs.

    `eos_id` is required (answers end with it); `pad_id` falls back to eos when the
    tokenizer has no pad token (as the original Coconut does). `bos_id` may be None.
    """

    def __init__(self, hf_tokenizer, source: str = ""):
        self.hf = hf_tokenizer
        self.source = source
        if self.hf.eos_token_id is None:
            raise TokenizerError(f"tokenizer {source or ''} has no eos token; set eos_token in tokenizer_config.json")

    # ------------------------------------------------------------------ ids
    @property
    def eos_id(self) -> int:
        return int(self.hf.eos_token_id)

    @property
    def bos_id(self) -> int | None:
        return None if self.hf.bos_token_id is None else int(self.hf.bos_token_id)

    @property
    def pad_id(self) -> int:
        return int(self.hf.pad_token_id) if self.hf.pad_token_id is not None else self.eos_id

    @property
    def vocab_size(self) -> int:
        """Number of ids in use (base vocabulary plus added tokens)."""
        return len(self.hf)

    def token_to_id(self, token: str) -> int | None:
        """Id of a single token string, None when it is not one token of the vocabulary."""
        v = self.hf.get_vocab().get(token)
        return None if v is None else int(v)

    @property
    def latent_ids(self) -> LatentTokenIds | None:
        """The Coconut special token ids, None until they are added."""
        ids = [self.token_to_id(t) for t in COCONUT_TOKENS]
        return None if any(i is None for i in ids) else LatentTokenIds(*ids)

    # ------------------------------------------------------------- encoding
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        if not texts:
            return []
        backend = getattr(self.hf, "backend_tokenizer", None)
        if backend is not None:  # the Rust tokenizer directly: same ids, less overhead
            return [e.ids for e in backend.encode_batch_fast(list(texts), add_special_tokens=add_special_tokens)]
        return [list(x) for x in self.hf(list(texts), add_special_tokens=add_special_tokens)["input_ids"]]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def save(self, out_dir: str) -> str:
        """Saves an HF-loadable tokenizer dir (tokenizer.json + tokenizer_config.json)."""
        os.makedirs(out_dir, exist_ok=True)
        self.hf.save_pretrained(out_dir)
        # a generic fast tokenizer: write the class name every transformers version knows
        # (v5 writes its new backend name)
        cfg_path = os.path.join(out_dir, "tokenizer_config.json")
        if os.path.isfile(cfg_path):
            with open(cfg_path) as f:
                cfg = json.load(f)
            if cfg.get("tokenizer_class") == "TokenizersBackend":
                cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
                with open(cfg_path, "w") as f:
                    json.dump(cfg, f, indent=2)
        return out_dir

    def __len__(self) -> int:
        return self.vocab_size


def load_tokenizer(path: str) -> Tokenizer:
    """Loads a local HF tokenizer directory (or a model dir that holds one)."""
    if not os.path.isdir(path):
        raise TokenizerError(f"{path}: no such tokenizer directory; pass a local HF model or tokenizer dir")
    files = set(os.listdir(path))
    if not files & {"tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json"}:
        raise TokenizerError(
            f"{path}: no tokenizer files (tokenizer.json / tokenizer_config.json); copy them from the HF "
            "checkpoint or train one with latent_jax.data.tokenizer.train_tokenizer"
        )
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - surfaced as one line naming the dir
        raise TokenizerError(f"{path}: transformers could not load the tokenizer ({type(e).__name__}: {e})") from None
    return Tokenizer(hf, source=path)


def train_tokenizer(
    texts: Iterable[str],
    out_dir: str | None = None,
    vocab_size: int = 512,
    min_frequency: int = 2,
    add_latent_tokens: bool = True,
    kind: str = "bpe",
) -> Tokenizer:
    """Trains a tokenizer on `texts` (BOS added to encodes with special tokens, EOS and pad
    set; the Coconut tokens included when add_latent_tokens). `kind`: "bpe" (byte-level BPE
    of at most vocab_size ids, merges seen min_frequency times) or "word" (every pre-token
    of the training texts -- a word with its leading space, a punctuation run, a newline --
    is one id, up to vocab_size ids, most frequent first; others map to `<unk>`) or
    "whitespace" (as "word", but split on whitespace only and decoded with single spaces). Saved to
    out_dir as an HF tokenizer dir when given."""
    from tokenizers import Tokenizer as TkTokenizer
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind not in TOKENIZER_KINDS:
        raise TokenizerError(f"tokenizer kind={kind!r}; use one of {', '.join(TOKENIZER_KINDS)}")
    specials = [PAD, BOS, EOS] + (list(COCONUT_TOKENS) if add_latent_tokens else [])
    if kind in ("word", "whitespace"):
        specials.append(UNK)
        tk = TkTokenizer(models.WordLevel(unk_token=UNK))
        trainer = trainers.WordLevelTrainer(
            vocab_size=max(vocab_size, len(specials) + 1), min_frequency=1, special_tokens=specials,
            show_progress=False,
        )
    else:
        tk = TkTokenizer(models.BPE())
        trainer = trainers.BpeTrainer(
            vocab_size=max(vocab_size, 256 + len(specials)),
            min_frequency=min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    if kind == "whitespace":  # no decoder: tokens are joined by single spaces
        tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    else:
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tk.decoder = decoders.ByteLevel()
    texts = list(texts)
    if not texts:
        raise TokenizerError("no training texts for the tokenizer; check the training data file")
    tk.train_from_iterator(texts, trainer=trainer)
    bos_id = tk.token_to_id(BOS)
    tk.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    extra = {"unk_token": UNK} if kind != "bpe" else {}
    hf = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=BOS, eos_token=EOS, pad_token=PAD, **extra)
    tok = Tokenizer(hf, source="trained")
    if out_dir:
        tok.save(out_dir)
    return tok


def add_coconut_tokens(tok: Tokenizer) -> LatentTokenIds:
    """Adds the Coconut tokens (no-op for those already present); returns their ids."""
    missing = [t for t in COCONUT_TOKENS if tok.token_to_id(t) is None]
    if missing:
        tok.hf.add_tokens(missing, special_tokens=True)
    ids = tok.latent_ids
    assert ids is not None
    return ids


def coconut_init_token_id(tok: Tokenizer) -> int | None:
    """The id the original Coconut initialises new token rows from ("<<"), when "<<" is a
    single token of this tokenizer; else None (use the mean row)."""
    ids = tok.encode("<<")
    unk = tok.hf.unk_token_id
    return ids[0] if len(ids) == 1 and (unk is None or ids[0] != unk) else None


def text_corpus(examples, fmt=None) -> list[str]:
    """The training texts of Coconut examples (question, steps, '### ' + answer; the
    separators of `fmt`, a curriculum.ProblemFormat, when given), for tokenizer training."""
    q_sfx, s_sfx, a_pfx = ("\n", "\n", "### ") if fmt is None else (fmt.question_suffix, fmt.step_suffix, fmt.answer_prefix)
    sep = "" if fmt is None or fmt.name == "text" else " "
    out = []
    for e in examples:
        out.append(sep.join([e.question + q_sfx, *(s + s_sfx for s in e.steps), a_pfx + e.answer]))
    if fmt is not None and fmt.name == "graph":  # every node id of the vocabulary, seen in training or not
        n = max((len(e.extra.get("idx_to_symbol", ())) for e in examples), default=0)
        if n:
            out.append(" ".join(str(i) for i in range(n)))
    return out


# ------------------------------------------------------------------- embeddings
def _new_rows(table: np.ndarray, n_new: int, init_from_token_id: int | None, rng, scale: float) -> np.ndarray:
    if init_from_token_id is not None:
        if not 0 <= init_from_token_id < table.shape[0]:
            raise ValueError(f"init_from_token_id={init_from_token_id} is outside the vocabulary (size {table.shape[0]})")
        row = table[init_from_token_id]
    else:
        row = table.mean(axis=0)
    rows = np.broadcast_to(row, (n_new, table.shape[1])).astype(np.float32)
    if rng is not None:
        import jax

        rows = rows + scale * np.asarray(jax.random.normal(rng, rows.shape, np.float32))
    return rows


def resize_embeddings(
    params: dict,
    config: ModelConfig,
    new_vocab: int,
    init_from_token_id: int | None = None,
    rng=None,
    reinit_ids: Sequence[int] | None = None,
) -> tuple[dict, ModelConfig]:
    """Grows the decoder's vocabulary to `new_vocab` rows (embed_tokens, and lm_head when
    untied). New rows (and the rows in `reinit_ids`, e.g. added tokens that fall inside a
    padded vocabulary) copy the row of `init_from_token_id` (the original Coconut copies
    "<<"), or the mean row when it is None; with `rng`, normal noise of scale
    initializer_range is added. Returns (params, config) with config.vocab_size updated;
    the input params are not modified."""
    import jax.numpy as jnp

    old = config.vocab_size
    if new_vocab < old:
        raise ValueError(f"new_vocab={new_vocab} is smaller than the model's vocab_size={old}; shrinking is not supported")
    emb_p = params.get("embed_tokens", {}).get("embedding")
    if emb_p is None:
        raise ValueError("params have no embed_tokens/embedding; pass decoder params")
    targets = sorted(set(range(old, new_vocab)) | {int(i) for i in (reinit_ids or ())})
    if any(not 0 <= i < new_vocab for i in targets):
        raise ValueError(f"reinit_ids {list(reinit_ids or [])} must lie in [0, {new_vocab})")
    if init_from_token_id is not None and init_from_token_id in targets:
        raise ValueError(f"init_from_token_id={init_from_token_id} is itself being (re)initialised; pick an existing token")

    def grow(table: np.ndarray, rng_i) -> np.ndarray:
        table = np.asarray(table, dtype=np.float32)
        out = np.concatenate([table, np.zeros((new_vocab - old, table.shape[1]), np.float32)], 0)
        if targets:
            out[targets] = _new_rows(table, len(targets), init_from_token_id, rng_i, config.initializer_range)
        return out

    if rng is not None:
        import jax

        rng_e, rng_h = jax.random.split(rng)
    else:
        rng_e = rng_h = None
    new = dict(params)
    dt = emb_p.dtype
    new["embed_tokens"] = dict(params["embed_tokens"], embedding=jnp.asarray(grow(emb_p, rng_e), dtype=dt))
    if not config.tie_word_embeddings:
        head = params.get("lm_head", {}).get("kernel")
        if head is None:
            raise ValueError("config has untied embeddings but params have no lm_head/kernel")
        grown = grow(np.asarray(head).T, rng_h).T
        new["lm_head"] = dict(params["lm_head"], kernel=jnp.asarray(grown, dtype=head.dtype))
        if "bias" in params["lm_head"]:
            b = np.asarray(params["lm_head"]["bias"], np.float32)
            nb = np.concatenate([b, np.zeros(new_vocab - old, np.float32)])
            if targets:
                nb[targets] = b[init_from_token_id] if init_from_token_id is not None else b.mean()
            new["lm_head"]["bias"] = jnp.asarray(nb, dtype=params["lm_head"]["bias"].dtype)
    return new, config.replace(vocab_size=new_vocab)

