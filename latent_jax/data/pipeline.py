"""Grain pipeline for Coconut: tokenize, apply the curriculum for the epoch, collate.

Training batches (`CoconutBatch`, fixed batch size B, T a multiple of `bucket`):

    arrays["input_ids"]      (B, T) int32   token ids (pad_id on padding)
    arrays["attention_mask"] (B, T) int32   1 on real tokens
    arrays["labels"]         (B, T) int32   -100 on question, markers, latents and padding
    arrays["latent_mask"]    (B, T) bool    True at <|latent|> slots
    arrays["position_ids"]   (B, T) int32   max(cumsum(attention_mask) - 1, 0)
    arrays["label_sets"]     (B, T, K) int32  set-valued labels (thought_labels="reach"), members
                                            padded with -100; only when a sample has sets
    latent_start  int    column of every row's first latent slot (rows are left-padded so
                         they align there; with no latents: the column where the first one
                         would be, i.e. after <|start-latent|>, or after the question without
                         markers); a multiple of `bucket`
    num_latent    int    max latents in the batch: columns latent_start .. +num_latent-1 are
                         the thought columns (rows with fewer latents have ordinary tokens
                         there, latent_mask False)
    feedback      bool   False for the pause-as-thought ablation (latent slots are a
                         learned pause embedding, no hidden-state feedback)

Rows are left-padded to the alignment column and right-padded to T. The last partial
batch is padded with dummy rows (attention_mask all 0, labels -100, example_idx -1) or
dropped (`drop_remainder`). Evaluation batches (`EvalBatch`) hold generation prompts
(question + markers + latents) aligned the same way, plus the gold answers.

Per-epoch shuffle with a fixed seed (grain MapDataset.shuffle) and sharding by
jax.process_index() / process_count(): every process collates the same global batch (so
T, latent_start and num_latent agree across hosts) and keeps its own block of
global_batch_size / process_count rows. The iterator state is a JSON-serialisable dict
that resumes at the exact next batch.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterator, NamedTuple, Sequence

import grain
import numpy as np

from latent_jax.data.coconut_json import CoconutExample, DataError, load_coconut_json
from latent_jax.data.tokenizer import Tokenizer
from latent_jax.latent.curriculum import (
    FORMATS,
    IGNORE_INDEX,
    CurriculumConfig,
    CurriculumSample,
    EvalPrompt,
    LatentTokenIds,
    ProblemFormat,
    TokenizedExample,
    eval_prompt,
    scheduled_stage,
    train_sample,
)

log = logging.getLogger(__name__)
STATE_VERSION = 1


# ----------------------------------------------------------------------------- tokenize
def tokenize_examples(
    examples: Sequence[CoconutExample], tok: Tokenizer, fmt: ProblemFormat = FORMATS["text"]
) -> list[TokenizedExample]:
    """Tokenizes as the original Coconut: question + "\\n" with special tokens (BOS), each
    step + "\\n" without, "### " + answer without, then EOS (the suffixes and prefix are the
    format's; the graph format encodes its "[A]" apart, as `answer_lead` tokens). The example's
    extra fields (graph, image references, ...) and its question / answer / steps texts go to
    `extra`; rows with a `frontier` field (graph format) get `frontier_ids`, one token per node."""
    if not examples:
        return []
    q = tok.encode_batch([e.question + fmt.question_suffix for e in examples], add_special_tokens=True)
    if fmt.name == "text":  # one piece, as the original tokenizes it
        a, lead = tok.encode_batch([fmt.answer_prefix + e.answer for e in examples]), 0
    else:
        lead_ids = tok.encode(fmt.answer_prefix)
        a, lead = [lead_ids + x for x in tok.encode_batch([e.answer for e in examples])], len(lead_ids)
    flat = [s + fmt.step_suffix for e in examples for s in e.steps]
    st = tok.encode_batch(flat)
    out, k = [], 0
    for i, e in enumerate(examples):
        n = len(e.steps)
        steps = tuple(tuple(x) for x in st[k : k + n])
        k += n
        out.append(
            TokenizedExample(
                question_ids=tuple(q[i]),
                step_ids=steps,
                answer_ids=tuple(a[i]) + (tok.eos_id,),
                idx=e.idx,
                extra={**e.extra, "question": e.question, "answer": e.answer, "steps": e.steps},
                answer_lead=lead,
                frontier_ids=_node_ids(e, tok, "frontier"),
                reach_ids=_node_ids(e, tok, "reach"),
                edge_ids=_edge_ids(e, tok),
            )
        )
    return out


def _edge_ids(e: CoconutExample, tok: Tokenizer) -> tuple[tuple[int, int], ...]:
    """The row's graph edges (graph format: `edges` in node ids) as (source, target) token ids."""
    edges = e.extra.get("edges")
    if not edges or "frontier" not in e.extra:
        return ()
    names = sorted({str(v) for edge in edges for v in edge})
    ids = dict(zip(names, tok.encode_batch(names)))
    if any(len(x) != 1 for x in ids.values()):
        raise DataError(f"row {e.idx}: graph nodes are not one token each; use the graph format's tokenizer "
                        "(data.tokenizer_kind='whitespace')")
    return tuple((ids[str(u)][0], ids[str(v)][0]) for u, v in edges)


def _node_ids(e: CoconutExample, tok: Tokenizer, field: str) -> tuple[tuple[int, ...], ...]:
    """Token ids of the row's per-depth node lists `field` ("frontier" or "reach"), one token per node."""
    layers = e.extra.get(field)
    if not layers:
        return ()
    out = []
    for layer in layers:
        ids = tok.encode_batch([str(v) for v in layer])
        if any(len(x) != 1 for x in ids) or not layer:
            raise DataError(
                f"row {e.idx}: {field} nodes {layer} are not one token each; use the graph format's tokenizer "
                "(data.tokenizer_kind='whitespace')"
            )
        out.append(tuple(x[0] for x in ids))
    return tuple(out)


def max_sequence_length(ex: TokenizedExample, cc: CurriculumConfig) -> int:
    """An upper bound of the example's training length over all stages."""
    marks = 2 if cc.markers else 0
    lat = max(cc.max_latent_stage, ex.num_steps) * cc.thoughts_per_step
    return len(ex.question_ids) + marks + lat + sum(len(s) for s in ex.step_ids) + len(ex.answer_ids)


def filter_by_length(
    examples: Sequence[TokenizedExample], cc: CurriculumConfig, max_length: int | None, name: str = "data"
) -> list[TokenizedExample]:
    """Drops examples whose sequence could exceed max_length (counted and logged). An empty
    result is an error: a run never trains on nothing."""
    if not examples:
        raise DataError(f"{name}: no examples; check the data file")
    if max_length is None:
        return list(examples)
    kept = [e for e in examples if max_sequence_length(e, cc) <= max_length]
    dropped = len(examples) - len(kept)
    if dropped:
        log.warning("%s: dropped %d of %d examples longer than max_length=%d", name, dropped, len(examples), max_length)
    if not kept:
        raise DataError(f"{name}: all {len(examples)} examples are longer than max_length={max_length}; raise max_length")
    return kept


# ----------------------------------------------------------------------------- batches
@dataclasses.dataclass
class CoconutBatch:
    """A padded, latent-aligned training batch (see the module docstring)."""

    arrays: dict[str, np.ndarray]
    latent_start: int
    num_latent: int
    feedback: bool = True
    example_idx: np.ndarray | None = None  # (B,) file row index, -1 for dummy rows
    stage: int = 0

    @property
    def num_real(self) -> int:
        return int((self.example_idx >= 0).sum()) if self.example_idx is not None else self.arrays["input_ids"].shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.arrays["input_ids"].shape)


@dataclasses.dataclass
class EvalBatch:
    """Generation prompts aligned at latent_start (rows left-padded; rows with fewer latents
    are right-padded with attention_mask 0), plus what scoring needs."""

    arrays: dict[str, np.ndarray]  # input_ids, attention_mask, latent_mask, position_ids
    latent_start: int
    num_latent: int
    feedback: bool
    example_idx: np.ndarray  # (B,), -1 for dummy rows
    questions: list[str]
    answers: list[str]
    steps: list[tuple[str, ...]]
    stage: int = 0

    @property
    def num_real(self) -> int:
        return int((self.example_idx >= 0).sum())


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _align(
    seqs: Sequence[Sequence[int]],
    anchors: Sequence[int],
    n_latent: Sequence[int],
    batch_size: int,
    pad_id: int,
    bucket: int,
    labels: Sequence[Sequence[int]] | None,
    label_sets: Sequence[Sequence[tuple[int, Sequence[int]]]] = (),
) -> tuple[dict[str, np.ndarray], int, int]:
    if len(seqs) > batch_size:
        raise ValueError(f"{len(seqs)} rows for batch_size={batch_size}")
    if not seqs:
        raise ValueError("cannot collate an empty batch")
    bucket = max(1, int(bucket))
    start = _round_up(max(1, max(anchors)), bucket)
    suffix = max(len(s) - a for s, a in zip(seqs, anchors))
    T = start + _round_up(max(1, suffix), bucket)
    B = batch_size
    ids = np.full((B, T), pad_id, np.int32)
    mask = np.zeros((B, T), np.int32)
    lat = np.zeros((B, T), bool)
    lab = np.full((B, T), IGNORE_INDEX, np.int32)
    for i, (s, a, n) in enumerate(zip(seqs, anchors, n_latent)):
        o = start - a
        ids[i, o : o + len(s)] = s
        mask[i, o : o + len(s)] = 1
        lat[i, start : start + n] = True
        if labels is not None:
            lab[i, o : o + len(s)] = labels[i]
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    arrays = {"input_ids": ids, "attention_mask": mask, "latent_mask": lat, "position_ids": pos}
    if labels is not None:
        arrays["labels"] = lab
    K = max((len(m) for sets in label_sets for _, m in sets), default=0)
    if K:
        ls = np.full((B, T, K), IGNORE_INDEX, np.int32)
        for i, (sets, a) in enumerate(zip(label_sets, anchors)):
            for p, m in sets:
                ls[i, start - a + p, : len(m)] = m
        arrays["label_sets"] = ls
    num_latent = max(n_latent)
    return arrays, start, num_latent


def collate_train(
    samples: Sequence[CurriculumSample],
    batch_size: int,
    pad_id: int,
    bucket: int = 16,
    feedback: bool = True,
    stage: int = 0,
) -> CoconutBatch:
    """Aligns samples at their first latent slot and pads them into a `CoconutBatch`
    (dummy rows fill up to batch_size)."""
    arrays, start, n = _align(
        [s.input_ids for s in samples],
        [s.anchor for s in samples],
        [s.n_latent for s in samples],
        batch_size,
        pad_id,
        bucket,
        [s.labels for s in samples],
        [s.label_sets for s in samples],
    )
    idx = np.full((batch_size,), -1, np.int64)
    idx[: len(samples)] = [s.idx for s in samples]
    return CoconutBatch(arrays, start, n, feedback=feedback, example_idx=idx, stage=stage)


def collate_eval(
    prompts: Sequence[EvalPrompt],
    batch_size: int,
    pad_id: int,
    bucket: int = 16,
    feedback: bool = True,
    stage: int = 0,
) -> EvalBatch:
    """Aligns generation prompts at their first latent slot into an `EvalBatch`."""
    arrays, start, n = _align(
        [p.input_ids for p in prompts],
        [p.anchor for p in prompts],
        [p.n_latent for p in prompts],
        batch_size,
        pad_id,
        bucket,
        None,
    )
    idx = np.full((batch_size,), -1, np.int64)
    idx[: len(prompts)] = [p.idx for p in prompts]
    pad = batch_size - len(prompts)
    return EvalBatch(
        arrays=arrays,
        latent_start=start,
        num_latent=n,
        feedback=feedback,
        example_idx=idx,
        questions=[p.extra.get("question", "") for p in prompts] + [""] * pad,
        answers=[p.extra.get("answer", "") for p in prompts] + [""] * pad,
        steps=[tuple(p.extra.get("steps", ())) for p in prompts] + [()] * pad,
        stage=stage,
    )


# ----------------------------------------------------------------------------- datasets
def _process_info(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count})")
    return int(process_index), int(process_count)


def _local(batch, rows: slice):
    """This process's rows of a globally collated batch (shapes and ints unchanged)."""
    if rows.start == 0 and rows.stop >= batch.arrays["input_ids"].shape[0]:
        return batch
    kw = {"arrays": {k: v[rows] for k, v in batch.arrays.items()}, "example_idx": batch.example_idx[rows]}
    if isinstance(batch, EvalBatch):
        kw.update(questions=batch.questions[rows], answers=batch.answers[rows], steps=batch.steps[rows])
    return dataclasses.replace(batch, **kw)


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of one epoch (fixed by (seed, epoch))."""
    return int(np.random.SeedSequence((int(seed), int(epoch))).generate_state(1)[0])


class _Base:
    def __init__(
        self,
        examples: Sequence[TokenizedExample],
        cc: CurriculumConfig,
        ids: LatentTokenIds,
        pad_id: int,
        batch_size: int,
        bucket: int,
        process_index: int | None,
        process_count: int | None,
        name: str,
    ):
        if not examples:
            raise DataError(f"{name}: no examples; check the data file and filters (a run never trains on nothing)")
        self.examples = list(examples)
        self.cc, self.ids, self.pad_id = cc, ids, int(pad_id)
        self.bucket, self.name = int(bucket), name
        self.process_index, self.process_count = _process_info(process_index, process_count)
        if batch_size % self.process_count:
            raise ValueError(
                f"batch_size={batch_size} is not divisible by process_count={self.process_count}; "
                "use a global batch size that is a multiple of the number of hosts"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.global_batch_size = int(batch_size)
        self.batch_size = batch_size // self.process_count  # rows per process

    def _rows(self) -> slice:
        return slice(self.process_index * self.batch_size, (self.process_index + 1) * self.batch_size)


class CoconutTrainData(_Base):
    """Training (or validation-loss) batches for each epoch of the curriculum."""

    def __init__(
        self,
        examples: Sequence[TokenizedExample],
        cc: CurriculumConfig,
        ids: LatentTokenIds,
        pad_id: int,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_remainder: bool = True,
        bucket: int = 16,
        process_index: int | None = None,
        process_count: int | None = None,
        name: str = "train",
        num_threads: int = 2,
        prefetch: int = 8,
    ):
        super().__init__(examples, cc, ids, pad_id, batch_size, bucket, process_index, process_count, name)
        self.seed, self.shuffle, self.drop_remainder = int(seed), bool(shuffle), bool(drop_remainder)
        self.num_threads, self.prefetch = int(num_threads), int(prefetch)
        if self.steps_per_epoch == 0:
            raise DataError(
                f"{name}: {len(self.examples)} examples make no full batch of {self.global_batch_size}; "
                "lower batch_size or set drop_remainder=False"
            )

    @property
    def steps_per_epoch(self) -> int:
        n, b = len(self.examples), self.global_batch_size
        return n // b if self.drop_remainder else -(-n // b)

    def epoch_dataset(self, epoch: int) -> grain.MapDataset:
        """The epoch's batches as a random-access grain MapDataset of CoconutBatch."""
        cc, ids, stage = self.cc, self.ids, scheduled_stage(epoch, self.cc)
        ds = grain.MapDataset.source(self.examples)
        if self.shuffle:
            ds = ds.shuffle(seed=epoch_seed(self.seed, epoch))
        ds = ds.map(lambda ex: train_sample(ex, epoch, cc, ids))
        bs, pad, bucket, fb, rows = self.global_batch_size, self.pad_id, self.bucket, cc.feedback, self._rows()
        return ds.batch(
            bs,
            drop_remainder=self.drop_remainder,
            batch_fn=lambda xs: _local(collate_train(xs, bs, pad, bucket, feedback=fb, stage=stage), rows),
        )

    def fingerprint(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_examples": len(self.examples),
            "batch_size": self.global_batch_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "process_count": self.process_count,
        }

    def iterator(self, epoch: int = 0, state: dict | None = None) -> "EpochIterator":
        """Iterator over one epoch's batches; with `state` (from get_state) it continues at
        the saved epoch and next batch (epoch is then taken from the state)."""
        if state is not None:
            state = dict(state)
            if state.get("version") != STATE_VERSION:
                raise ValueError(f"data iterator state version {state.get('version')} is not {STATE_VERSION}")
            fp = state.get("fingerprint", {})
            if fp != self.fingerprint():
                raise ValueError(
                    f"{self.name}: saved data iterator state was made for {fp}, this dataset is {self.fingerprint()}; "
                    "resume with the same data, batch size, seed and number of hosts"
                )
            epoch = int(state["epoch"])
        it = EpochIterator(self, epoch)
        if state is not None:
            it.set_state(state)
        return it


class EpochIterator:
    """Iterates one epoch's CoconutBatches; get_state() / set_state() give an exact resume."""

    def __init__(self, data: CoconutTrainData, epoch: int):
        self.data, self.epoch = data, int(epoch)
        self._ds = data.epoch_dataset(self.epoch)
        # a few background threads collate ahead; the default (16 threads, 500 batches) would
        # compete with the training step for the host's cores
        opts = grain.ReadOptions(num_threads=data.num_threads, prefetch_buffer_size=data.prefetch)
        self._it = iter(self._ds.to_iter_dataset(opts))

    def __iter__(self) -> "EpochIterator":
        return self

    def __next__(self) -> CoconutBatch:
        return next(self._it)

    def __len__(self) -> int:
        return len(self._ds)

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable position: epoch, next batch index and the dataset fingerprint."""
        inner = self._it.get_state()
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "next_index": int(inner["next_index"]),
            "fingerprint": self.data.fingerprint(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if int(state["epoch"]) != self.epoch:
            raise ValueError(f"state is for epoch {state['epoch']}, iterator is at epoch {self.epoch}")
        inner = self._it.get_state()
        inner["next_index"] = int(state["next_index"])
        self._it.set_state(inner)


class CoconutEvalData(_Base):
    """Generation prompts for a stage, in file order, last batch padded with dummy rows."""

    def __init__(
        self,
        examples: Sequence[TokenizedExample],
        cc: CurriculumConfig,
        ids: LatentTokenIds,
        pad_id: int,
        batch_size: int,
        *,
        bucket: int = 16,
        process_index: int | None = None,
        process_count: int | None = None,
        name: str = "valid",
    ):
        super().__init__(examples, cc, ids, pad_id, batch_size, bucket, process_index, process_count, name)

    def dataset(self, stage: int) -> grain.MapDataset:
        """Batches of EvalBatch for `stage` in file order (this process's rows of each global
        batch; the last one padded with dummy rows, so nothing is dropped)."""
        cc, ids = self.cc, self.ids
        ds = grain.MapDataset.source(self.examples).map(lambda ex: eval_prompt(ex, stage, cc, ids))
        bs, pad, bucket, fb, rows = self.global_batch_size, self.pad_id, self.bucket, cc.feedback, self._rows()
        return ds.batch(
            bs, drop_remainder=False, batch_fn=lambda xs: _local(collate_eval(xs, bs, pad, bucket, fb, stage), rows)
        )

    def batches(self, stage: int) -> Iterator[EvalBatch]:
        ds = self.dataset(stage)
        for i in range(len(ds)):
            yield ds[i]


def load_split(
    path: str,
    tok: Tokenizer,
    cc: CurriculumConfig,
    *,
    max_length: int | None = None,
    on_bad_row: str = "error",
    max_rows: int | None = None,
    fmt: ProblemFormat = FORMATS["text"],
) -> list[TokenizedExample]:
    """Coconut JSON file -> tokenized examples, length-filtered (never empty)."""
    rows = load_coconut_json(path, on_bad_row=on_bad_row, max_rows=max_rows)
    return filter_by_length(tokenize_examples(rows, tok, fmt), cc, max_length, name=path)


# ----------------------------------------------------------------------------- one shape per stage
class Geometry(NamedTuple):
    """One batch shape for a whole stage: latent column, length, thought columns, and the
    largest set of a set-valued label (0: the stage has none)."""

    start: int
    T: int
    num_latent: int = 0
    label_set: int = 0


def geometry(samples, bucket: int) -> Geometry:
    """The Geometry that fits every sample (anchor, input_ids, n_latent): one compiled program
    per curriculum stage instead of one per batch (with uniform_prob mixing the batches of a
    stage hold different latent counts; thought columns past a row's latents hold its
    ordinary tokens, so scanning the stage's maximum is exact)."""
    start = _round_up(max(max(s.anchor for s in samples), 1), bucket)
    suffix = _round_up(max(max(len(s.input_ids) - s.anchor for s in samples), 1), bucket)
    K = max((len(m) for s in samples for _, m in getattr(s, "label_sets", ())), default=0)
    return Geometry(start, start + suffix, max(s.n_latent for s in samples), K)


def repad(arrays: dict, latent_start: int, start: int, T: int, pad_id: int, label_set: int = 0) -> dict:
    """Re-pad an aligned batch so its latent column is `start`, its length `T` and, with
    label_set > 0, its `label_sets` (B, T, label_set) (created empty when the batch has none)."""
    shift = start - latent_start
    old_T = arrays["input_ids"].shape[1]
    if shift < 0 or shift + old_T > T:
        raise ValueError(f"batch (latent_start {latent_start}, T {old_T}) does not fit geometry ({start}, {T})")
    arrays = dict(arrays)
    if label_set and "label_sets" not in arrays:
        arrays["label_sets"] = np.full(arrays["input_ids"].shape + (label_set,), -100, np.int32)
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": -100, "latent_mask": False, "position_ids": 0,
            "label_sets": -100}
    out = {k: np.pad(a, ((0, 0), (shift, T - shift - old_T), (0, label_set - a.shape[-1]))[: a.ndim],
                     constant_values=fill.get(k, 0))
           for k, a in arrays.items()}
    if "attention_mask" in out:
        out["position_ids"] = np.maximum(np.cumsum(out["attention_mask"], axis=1) - 1, 0).astype(np.int32)
    return out


def eval_geometry(examples, stage: int, cc: CurriculumConfig, ids, bucket: int) -> Geometry:
    """The Geometry of the evaluation prompts of `examples` at curriculum `stage`."""
    return geometry([eval_prompt(e, stage, cc, ids) for e in examples], bucket)
