"""The one description of MusicGen's codec, checked against transformers' own reading of it."""

from engine.codec import MUSICGEN_CODEC, codec_facts, musicgen_codec_config


def test_facts_agree_with_transformers():
    cfg = musicgen_codec_config()
    facts = codec_facts(MUSICGEN_CODEC)
    # transformers' derived properties, not our formula: 4 codebooks of 2048 at 50 Hz, 32 kHz
    assert (cfg.num_quantizers, cfg.frame_rate, cfg.sampling_rate, cfg.codebook_size) == (4, 50, 32000, 2048)
    assert facts == {"sample_rate": 32000, "frame_rate": 50, "num_codebooks": 4, "codebook_size": 2048}


def test_changes_leave_the_geometry():
    small = musicgen_codec_config(num_filters=4, hidden_size=8, codebook_dim=8)
    assert small.num_filters == 4 and small.hidden_size == 8
    assert (small.num_quantizers, small.frame_rate, small.upsampling_ratios) == (4, 50, [8, 5, 4, 4])
    assert MUSICGEN_CODEC["num_filters"] == 64  # the shared description is not changed by a caller's changes
