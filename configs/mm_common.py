"""Fields shared by the multimodal Coconut configs (CinePile, A-OKVQA): the
`multimodal_coconut` workflow (latent_jax.train.mm_loop)."""

import os
import sys

from ml_collections import ConfigDict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.base import get_base  # noqa: E402


def mm_base(family: str, dataset: str) -> ConfigDict:
    c = get_base()
    c.workflow = "multimodal_coconut"
    c.smoke = False  # True: build a tiny random model + dataset fixture under fixtures_dir
    c.fixtures_dir = ""  # default: workdir/fixtures
    c.model.family = family  # internvl | phi4mm (read from config.json; used by :smoke)
    c.coconut_mode = "coconut"  # no_cot (vanilla) | cot | coconut
    c.coconut = ConfigDict(dict(c_thought=1, epochs_per_stage=5, max_latent_stage=6, pad_latent_to_max=True))
    # none | no_curriculum | no_thought | pause_as_thought (latent_jax.latent.curriculum)
    c.coconut.ablation = "none"
    c.thought_norm = "none"  # none (as the original) | embed: rescale thoughts to the mean embedding norm
    c.data = ConfigDict()
    c.data.dataset = dataset
    c.data.path = ""
    c.data.train_split = "train"
    c.data.eval_split = "val" if dataset == "aokvqa" else "test"
    c.data.max_train = 0
    c.data.max_eval = 0
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
    # CinePile answer scoring: official (the official evaluation's rules, comparable with
    # published results) | lenient (looser; not comparable). results.json records it.
    c.eval.scorer = "official"
    c.bucket = 16
    c.save_model = True
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
    c.bucket = 8
    return c
