"""The live output's logic without a device: the ring's wrap-around, the take scheduler's sample-exact hand-over
and dry spells, and the sample clock's anchoring. (test_audio_out.py plays the same through a JACK server.)"""

from __future__ import annotations

import numpy as np

from bridge.audio_out import Ring, SampleClock, TakeScheduler, _Take

BLOCK = 256


def _noise(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.5, 0.5, (n, 1)).astype(np.float32)


def test_ring_wraps_around_by_absolute_position():
    ring = Ring(10, 1)
    data = np.arange(1, 26, dtype=np.float32)[:, None]
    out = np.empty((7, 1), np.float32)
    for pos in (0, 7, 14):  # writes and reads straddle the end of the buffer
        ring.put(pos, data[pos:pos + 7])
        ring.get(pos, out)
        np.testing.assert_array_equal(out, data[pos:pos + 7])
    assert ring.data[:, 0].tolist() == [21, 12, 13, 14, 15, 16, 17, 18, 19, 20]  # position 20 wrapped to index 0


def _take(scheduler: TakeScheduler, audio: np.ndarray, start: int, finished: bool = True) -> _Take:
    take = _Take()
    scheduler.schedule(take, start)
    take.ring.put(0, audio)
    take.write_pos = len(audio)
    take.finished = finished
    return take


def _render(scheduler: TakeScheduler, n_blocks: int, first: int = 0) -> np.ndarray:
    out = np.zeros((n_blocks * BLOCK, 1), np.float32)
    for k in range(n_blocks):
        scheduler.render(out[k * BLOCK:(k + 1) * BLOCK], first + k * BLOCK)
    return out[:, 0]


def test_next_take_takes_over_on_its_exact_sample():
    s = TakeScheduler(48000, 1)
    a, b = _noise(20000, 1), _noise(3000, 2)
    _take(s, a, start=1000)
    _take(s, b, start=1000 + 12345)  # inside a block, not on a block boundary
    out = _render(s, 80)
    np.testing.assert_array_equal(out[:1000], 0)
    np.testing.assert_array_equal(out[1000:13345], a[:12345, 0])  # the first plays up to the switch...
    np.testing.assert_array_equal(out[13345:16345], b[:, 0])  # ...then the second, from its first sample
    np.testing.assert_array_equal(out[16345:], 0)
    assert s.dry_spells == 0
    # Negative control: a scheduler that switched on block boundaries would put b at 13312 or 13568.
    assert not np.array_equal(out[13312:13312 + 3000], b[:, 0])


def test_a_take_scheduled_late_skips_to_stay_on_its_grid():
    s = TakeScheduler(48000, 1)
    a = _noise(4000, 3)
    _take(s, a, start=-100)  # its start was 100 samples before this block
    out = _render(s, 16)
    np.testing.assert_array_equal(out[:3900], a[100:, 0])
    np.testing.assert_array_equal(out[3900:], 0)


def test_dry_spell_is_counted_once_and_late_samples_are_dropped():
    s = TakeScheduler(48000, 1)
    a = _noise(6000, 4)
    take = _take(s, a[:1000], start=0, finished=False)
    out = np.zeros((24 * BLOCK, 1), np.float32)
    for k in range(24):  # blocks 4..11 run dry; the rest arrives while block 12 is due
        if k == 12:
            take.ring.put(1000, a[1000:])
            take.write_pos = 6000
            take.finished = True
        s.render(out[k * BLOCK:(k + 1) * BLOCK], k * BLOCK)
    out = out[:, 0]
    assert s.dry_spells == 1  # one spell, however many blocks; running out at the end is not one
    np.testing.assert_array_equal(out[:1000], a[:1000, 0])
    np.testing.assert_array_equal(out[1000:12 * BLOCK], 0)
    np.testing.assert_array_equal(out[12 * BLOCK:6000], a[12 * BLOCK:, 0])  # on its own position, not late
    np.testing.assert_array_equal(out[6000:], 0)
    assert take.done


def test_a_third_take_replaces_the_one_still_waiting():
    s = TakeScheduler(48000, 1)
    a, b, c = _noise(5000, 5), _noise(5000, 6), _noise(2000, 7)
    first = _take(s, a, start=0)
    _render(s, 1)  # a plays
    waiting = _take(s, b, start=3000)
    third = _take(s, c, start=2000)  # before b started: b is dropped, c gets b's slot and the free ring
    assert waiting.done and third.ring is not first.ring
    out = _render(s, 20, first=BLOCK)
    np.testing.assert_array_equal(out[:2000 - BLOCK], a[BLOCK:2000, 0])
    np.testing.assert_array_equal(out[2000 - BLOCK:4000 - BLOCK], c[:, 0])


class _FakeTime:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_sample_clock_maps_times_from_one_anchor():
    mono = _FakeTime()
    stream_offset = 5000.0  # stream time = monotonic + 5000
    reads = iter([0.0, 30e-6, -40e-6] * 100)  # jitter of the stream-time reads
    clock = SampleClock(32000, lambda: mono.t + stream_offset + next(reads), mono)
    jitter = [0.0, 0.003, -0.002, 0.0, 0.001, 0.0, 2**32 / 32000, 0.0, -0.001, 0.0]  # ms both ways, one wrapped
    for k, j in enumerate(jitter):  # sample 64000 + 256 k is heard 10 ms + 8 k ms from now
        clock.note_block(64000 + 256 * k, mono.t + stream_offset + 0.010 + 256 * k / 32000 + j)
    assert clock.sample_at(mono.t + 0.010) == 64000
    first = clock.sample_at(mono.t + 0.2)
    mono.t += 0.001  # a later take, mapped with the same anchor whatever the reads do now
    second = clock.sample_at(100.0 + 0.95)
    assert second - first == 24000  # 0.75 s apart: exactly 0.75 x 32000 samples
    clock.lost_blocks()  # the device lost blocks: the count is behind, the next mapping starts afresh
    for k in range(8):
        clock.note_block(70000 + 256 * k, mono.t + stream_offset + 256 * k / 32000)
    assert clock.sample_at(mono.t) in (69999, 70000, 70001)  # within the jitter of one read
