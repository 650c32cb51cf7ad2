"""Fields shared by the multimodal Coconut configs (CinePile, A-OKVQA): the
`multimodal_coconut` workflow (latent_jax.tasks.coconut_mm)."""

import os
import sys

from ml_collections import ConfigDict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.base import coconut_settings, get_base  # noqa: E402


def mm_base(family: str, dataset: str) -> ConfigDict:
    c = get_base()
    c.workflow = "multimodal_coconut"
    c.smoke = False  # True: build a tiny random model + dataset fixture under fixtures_dir
    c.fixtures_dir = ""  # default: workdir/fixtures
    c.model.family = family  # internvl | phi4mm (read from config.json; used by :smoke)
    c.coconut_mode = "coconut"  # no_cot (vanilla) | cot | coconut
    c.coconut = coconut_settings()  # the curriculum, as the text Coconut configs
    c.chain = ""  # e.g. "no_cot,cot,coconut": runs in workdir/<mode>/, Coconut from the CoT best model
    c.chain_overrides = ConfigDict()
    c.coconut_from_cot = True
    c.load_model_path = ""  # start from this model (HF directory or Orbax VLM checkpoint, e.g. a best_model)
    c.remat_thoughts = True
    c.thought_norm = "none"  # none (as the original) | embed: rescale thoughts to the mean embedding norm
    c.data = ConfigDict()
    c.data.dataset = dataset
    c.data.path = ""
    c.data.train_split = "train"
    c.data.eval_split = "val" if dataset == "aokvqa" else "test"
    c.data.max_train = 0
    c.data.max_eval = 0
    c.data.val_holdout = 0  # validation: this many training items held out (0 = the eval split)
    c.data.bucket = 16
    # CinePile / video
    c.data.clips_dir = ""  # default: data.path/clips
    c.data.num_frames = 16
    c.data.max_videos = 100
    c.data.use_hard_split = False
    c.data.visual_reliance = False
    c.data.missing_clip = "skip"  # skip | subtitles (subtitles-only fallback); unreadable clips too
    c.data.max_unreadable_fraction = 0.1  # more unreadable (corrupt) clips than this fraction stops the run
    c.data.use_hico = False
    c.data.hico_tokens_per_frame = 16
    c.data.hico_clip_frames = 4
    # A-OKVQA / images
    c.data.coco_dir = ""
    c.data.multiple_choice = True
    c.data.max_tiles = 12  # InternVL tiles / Phi-4-MM HD crops per image
    c.data.short_prompt = False  # True: question + options only (no instructions / subtitles)
    c.eval = ConfigDict(dict(max_new_tokens=64, temperature=0.0, top_p=1.0, stage=-1))
    # CinePile / A-OKVQA answer scoring: official (the official evaluation's rules, comparable
    # with published results) | lenient (looser; not comparable). results.json records it.
    c.eval.scorer = "official"
    c.save_model = True  # also export best_model as an HF directory (final_model/; needs torch)
    c.optim.weight_decay = 0.0
    return c


def smoke(c: ConfigDict) -> ConfigDict:
    """Train + eval end to end on CPU in about a minute on fixtures built at run time."""
    c.smoke = True
    c.batch_size = 2
    c.num_epochs = 2
    c.log_every = 1
    c.save_model = False
    c.data.num_frames = 4
    c.data.max_videos = 3
    c.data.hico_tokens_per_frame = 2
    c.data.hico_clip_frames = 2
    c.data.max_tiles = 2
    c.data.short_prompt = True
    c.data.max_train = 4
    c.data.max_eval = 2
    c.coconut.epochs_per_stage = 1
    c.coconut.max_latent_stage = 1
    c.eval.max_new_tokens = 8
    c.eval.temperature = 0.0
    c.optim.learning_rate = 1e-3
    c.data.bucket = 8
    c.progress = False
    return c
