"""The batching engine: a request's codes are the same alone or beside others (greedy and sampled, fp32 and int8,
text and melody models), requests join and leave mid-stream, an endless row slides its own window, cancel of one
row leaves the others untouched, admission past the rows puts endless streams first."""

from __future__ import annotations

import threading
import time
from fractions import Fraction

import numpy as np
import pytest
import torch

from engine.batch_cache import BatchCache
from engine.batch_engine import BatchEngine
from engine.bars import Tempo
from engine.errors import Cancelled
from engine.generate import open_stream
from engine.interface import StreamSpec
from engine.local_engine import LocalEngine
from engine.sampling import SamplingSettings
from tests.test_stream_decode import MIN_SNR_DB, snr_db

# Prompts of different lengths (padded text keys), every sampling mode, with and without guidance.
REQUESTS = [
    ("warm keys", SamplingSettings(seed=1, top_k=50), 24),
    ("techno drums at night, 128 bpm, loud and dark", SamplingSettings(seed=2), 33),
    ("x", SamplingSettings(seed=3, greedy=True), 18),
    ("ambient pad", SamplingSettings(seed=4, cfg=1.0, top_p=0.9), 29),
]


def alone(model, prompt, settings, frames, **kw):
    return open_stream(model, prompt, settings, frames=frames, **kw).run().clone()


def batched(engine, requests, stagger=0.02, **kw):
    """Run requests at once on `engine` (each on its own thread, started a little apart); their codes."""
    out = [None] * len(requests)

    def run(i):
        prompt, settings, frames = requests[i]
        out[i] = engine.token_stream(prompt, settings, frames=frames, **kw).run().clone()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
        time.sleep(stagger)
    for t in threads:
        t.join(60)
    return out


@pytest.fixture(scope="module")
def int8_model(tiny_mono):
    from engine.checkpoint import load_model

    return load_model(str(tiny_mono[0]), device="cpu", dtype="int8")


@pytest.mark.parametrize("which", ["mono_model", "int8_model"])
def test_batched_codes_equal_alone(which, request):
    model = request.getfixturevalue(which)
    engine = BatchEngine(model)
    try:
        together = batched(engine, REQUESTS)
        assert engine.stats.rows / engine.stats.rounds > 2  # the requests did share decoder steps
    finally:
        engine.close()
    for (prompt, settings, frames), codes in zip(REQUESTS, together):
        assert torch.equal(codes, alone(model, prompt, settings, frames)), prompt


def test_batched_melody_codes_equal_alone(melody_model):
    rng = np.random.default_rng(0)
    chroma = np.eye(12, dtype=np.float32)[rng.integers(0, 12, 300)]
    requests = [("jazz piano", SamplingSettings(seed=5), 30), ("a much longer text prompt for the prefix", SamplingSettings(seed=6, greedy=True), 25)]
    engine = BatchEngine(melody_model)
    try:
        together = batched(engine, requests, melody=chroma)
    finally:
        engine.close()
    for (prompt, settings, frames), codes in zip(requests, together):
        assert torch.equal(codes, alone(melody_model, prompt, settings, frames, melody=chroma))


def test_unmasked_text_padding_would_change_codes(mono_model, monkeypatch):
    """Negative control for the equality test: without the text key mask, padded keys leak into short prompts."""
    set_condition = BatchCache.set_condition

    def unmasked(self, row, cross):
        set_condition(self, row, cross)
        self.cross_mask[row : row + cross.shape[0]] = 0

    monkeypatch.setattr(BatchCache, "set_condition", unmasked)
    engine = BatchEngine(mono_model)
    long_prompt, short = REQUESTS[1][0], REQUESTS[2]  # "x": the shortest prompt, most padding
    try:
        # The long prompt runs long enough that "x" surely joins its batch (not left to thread timing).
        a = engine.token_stream(long_prompt, SamplingSettings(seed=2), frames=600)
        t = threading.Thread(target=lambda: pytest.raises(Cancelled, a.run))
        t.start()
        while a.cursor.n_final < 5:
            time.sleep(0.001)
        together = engine.token_stream(short[0], short[1], frames=short[2]).run().clone()
        a.cancel.set()
        t.join(60)
    finally:
        engine.close()
    assert not torch.equal(together, alone(mono_model, *short))


def test_join_and_leave_mid_stream(mono_model):
    engine = BatchEngine(mono_model)
    long_req, short_req = ("slow strings", SamplingSettings(seed=7), 90), ("hi hats", SamplingSettings(seed=8), 15)
    try:
        a = engine.token_stream(*long_req[:2], frames=long_req[2])
        got = {}
        t = threading.Thread(target=lambda: got.setdefault("a", a.run().clone()))
        t.start()
        while a.cursor.n_final < 10:
            time.sleep(0.001)
        b = engine.token_stream(*short_req[:2], frames=short_req[2])
        got["b"] = b.run().clone()
        # The short request joined after the long one began and left well before its end.
        assert not a.cursor.done
        t.join(60)
    finally:
        engine.close()
    assert torch.equal(got["a"], alone(mono_model, *long_req))
    assert torch.equal(got["b"], alone(mono_model, *short_req))


def test_endless_row_slides_its_own_window(mono_model):
    """An endless stream beside a finite one re-prefills only its own rows when its window slides."""
    window = dict(window_frames=30, keep_frames=10)
    settings = SamplingSettings(seed=9, top_k=20)
    ref = open_stream(mono_model, "dub", settings, frames=None, **window)
    while ref.new_frames < 50:
        ref.step()
    engine = BatchEngine(mono_model)
    try:
        other = {}
        t = threading.Thread(target=lambda: other.setdefault("codes", engine.token_stream("organ", SamplingSettings(seed=10), frames=45).run().clone()))
        t.start()
        jam = engine.token_stream("dub", settings, frames=None, **window)
        while jam.new_frames < 50:
            jam.step()
        codes = jam.codes(0, 50).clone()
        jam.release()
        t.join(60)
        assert engine.stats.prefills >= 3  # two joins and at least one slide of the jam
    finally:
        engine.close()
    assert torch.equal(codes, ref.codes(0, 50))
    assert torch.equal(other["codes"], alone(mono_model, "organ", SamplingSettings(seed=10), 45))


def test_cancel_one_row_leaves_the_others(mono_model):
    engine = BatchEngine(mono_model)
    reqs = [("a", SamplingSettings(seed=11), 40), ("bb", SamplingSettings(seed=12), 40), ("ccc", SamplingSettings(seed=13), 40)]
    try:
        streams = [engine.token_stream(p, s, frames=f) for p, s, f in reqs]
        results, errors = {}, {}

        def run(i):
            try:
                results[i] = streams[i].run().clone()
            except Cancelled as e:
                errors[i] = e

        threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        while streams[1].cursor.n_final < 10:
            time.sleep(0.001)
        streams[1].cancel.set()  # the middle request: the last one's rows move into its place
        for t in threads:
            t.join(60)
    finally:
        engine.close()
    assert set(errors) == {1} and not streams[1].cursor.done
    for i in (0, 2):
        assert torch.equal(results[i], alone(mono_model, *reqs[i]))


def test_endless_streams_are_admitted_first(mono_model):
    engine = BatchEngine(mono_model, max_rows=2)
    assert engine.capacity == 1
    try:
        first = engine.token_stream("first", SamplingSettings(seed=14), frames=40)
        while first.slot is None:
            time.sleep(0.001)
        render = engine.token_stream("render", SamplingSettings(seed=15), frames=10)
        jam = engine.token_stream("jam", SamplingSettings(seed=16), frames=None)
        assert render.slot is None and jam.slot is None  # no room: both wait
        first.run()
        deadline = time.monotonic() + 30
        while jam.slot is None and time.monotonic() < deadline:
            time.sleep(0.001)
        assert jam.slot == 0 and render.slot is None  # the jam went first, though it came later
        jam.release()
        assert render.run().shape[1] == 10
    finally:
        engine.close()


def test_engine_streams_equal_local_engine(mono_model):
    """Through the Engine interface: two streams at once give the in-process engine's codes, one by one, and its
    audio up to the float rounding of a batched codec call (the streaming decoder test's bound)."""
    tempo = Tempo(Fraction(120), 4, 4)
    specs = [StreamSpec("warm keys", SamplingSettings(seed=17, top_k=50), tempo=tempo, bars=Fraction(1, 2), chunk_bars=Fraction(1, 4)),
             StreamSpec("deep house", SamplingSettings(seed=18), seconds=1.0, chunk_seconds=0.5)]
    local = LocalEngine(mono_model)

    def render(stream):
        audio = np.concatenate([c.audio for c in stream], 1)
        return audio, stream._session.stream.codes().clone()

    expected = [render(local.open(s)) for s in specs]
    local.close()
    engine = BatchEngine(mono_model)
    got = [None, None]

    def run(i):
        got[i] = render(engine.open(specs[i]))

    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        engine.close()
    for (e_audio, e_codes), (g_audio, g_codes) in zip(expected, got):
        assert torch.equal(e_codes, g_codes)
        assert e_audio.shape == g_audio.shape
        assert snr_db(g_audio, e_audio) > MIN_SNR_DB


def _take_codes(engine, spec, n):
    from engine.takes import render_takes

    return [t.codes for t in render_takes(engine, spec, n)]


def test_takes_share_one_t5_pass_one_prefill_and_codec_calls(mono_model):
    """4 takes: one T5 pass, one prefill (copied to the other takes' rows), batched codec calls; each take's codes
    equal its seed's alone."""
    spec = StreamSpec("takes share a prompt", SamplingSettings(seed=40, top_k=50), seconds=0.6, chunk_seconds=0.3)
    engine = BatchEngine(mono_model)
    passes = mono_model.text.passes
    try:
        codes = _take_codes(engine, spec, 4)
        assert mono_model.text.passes - passes == 1
        assert engine.stats.prefills == 4 and engine.stats.prefills_shared == 3
        assert engine.codec.calls < engine.codec.jobs  # some pushes of the 4 ran as one codec call
    finally:
        engine.close()
    frames = codes[0].shape[1]
    for i, c in enumerate(codes):
        assert torch.equal(c, alone(mono_model, spec.prompt, SamplingSettings(seed=40 + i, top_k=50), frames)), i


def test_different_prompts_share_nothing(mono_model):
    """Negative control: requests with their own prompts each run T5 and their own prefill. (The tiny test
    tokenizer reads most words as one unknown token, so these prompts differ in length.)"""
    engine = BatchEngine(mono_model)
    passes = mono_model.text.passes
    try:
        prompts = ["own", "own prompt", "own prompt here"]
        batched(engine, [(p, SamplingSettings(seed=50 + i), 12) for i, p in enumerate(prompts)], stagger=0)
        assert mono_model.text.passes - passes == 3
        assert engine.stats.prefills == 3 and engine.stats.prefills_shared == 0
    finally:
        engine.close()


def test_shared_prefill_needs_the_copied_rows(mono_model, monkeypatch):
    """Negative control for the takes test: without the copy of the twin's keys and values, takes 1-3 change."""
    spec = StreamSpec("takes share a prompt too", SamplingSettings(seed=60, top_k=50), seconds=0.3, chunk_seconds=0.3)
    monkeypatch.setattr(BatchCache, "move", lambda *a: None)  # nothing leaves the batch here, so only the copy uses it
    engine = BatchEngine(mono_model)
    try:
        codes = _take_codes(engine, spec, 2)
        assert engine.stats.prefills_shared == 1
    finally:
        engine.close()
    frames = codes[0].shape[1]
    same = [torch.equal(c, alone(mono_model, spec.prompt, SamplingSettings(seed=60 + i, top_k=50), frames)) for i, c in enumerate(codes)]
    assert sorted(same) == [False, True]  # the take that ran the prefill is right, the one that copied it is not


def test_row_mask_is_in_the_activations_dtype():
    """The batch's per-row key mask comes in the activations' dtype: SDPA on CUDA refuses an fp32 mask beside bf16
    queries (it did, on the first GPU run of the batch engine)."""
    from tests.test_speed_paths import _tiny_lm

    lm = _tiny_lm()
    lm.out_norm.to(torch.bfloat16)  # what names the activations' dtype: bf16, as on a GPU
    mask = lm.row_mask(torch.tensor([[2], [4]]), 6)
    assert mask.dtype == torch.bfloat16 == lm.act_dtype
    assert mask[:, 0, 0].tolist() == [[0, 0, 0, float("-inf"), float("-inf"), float("-inf")],
                                      [0, 0, 0, 0, 0, float("-inf")]]


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("mode", ["graph", "eager"])
def test_batched_streams_run_on_cuda_in_half_precision(tiny_mono, dtype, mode):
    from engine.checkpoint import load_model

    model = load_model(str(tiny_mono[0]), device="cuda", dtype=dtype)
    engine = BatchEngine(model, step_mode=mode)
    try:
        together = batched(engine, REQUESTS)
        assert engine.stats.rows / engine.stats.rounds > 2  # the requests did share decoder steps
    finally:
        engine.close()
    if mode == "graph":  # the rounds ran as captured graphs, not the eager fallback
        step = model.lm.compiled_steps["batch-graph"]
        assert not step.failed and step.graphs
    for (prompt, settings, frames), codes in zip(REQUESTS, together):
        assert codes.shape == (model.pattern.n_codebooks, frames) and codes.min() >= 0 and codes.max() < 2048, prompt
    # The greedy request alone, in the same precision: the same codes until rounding parts the two runs, which
    # in a 2-layer model takes more than a few frames.
    prompt, settings, frames = REQUESTS[2]
    assert torch.equal(together[2][:, :4].cpu(), alone(model, prompt, settings, frames)[:, :4].cpu())


def test_eager_cuda_attention_skips_cudnn_but_a_capture_keeps_it():
    """cuDNN's SDPA plans per key length: eager CUDA steps (lengths grow every step) leave it out; a CUDA graph's
    warm-up and capture (`static_shapes`: one shape) and CPU steps keep torch's own choice. Checked through the
    backends each case enables."""
    from torch.nn.attention import SDPBackend

    from engine import lm as lm_module

    class Query:
        def __init__(self, kind):
            self.device = torch.device(kind)

    nothing = type(lm_module.contextlib.nullcontext())
    assert isinstance(lm_module._sdpa_backends(Query("cpu")), nothing)
    with lm_module.static_shapes():
        assert isinstance(lm_module._sdpa_backends(Query("cuda")), nothing)
        seen = []  # another thread's eager steps are not static
        t = threading.Thread(target=lambda: seen.append(lm_module._sdpa_backends(Query("cuda"))))
        t.start()
        t.join()
        assert not isinstance(seen[0], nothing)
    with lm_module._sdpa_backends(Query("cuda")):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.mem_efficient_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
    assert SDPBackend.CUDNN_ATTENTION not in lm_module._EAGER_CUDA_BACKENDS


@pytest.fixture
def faked_cuda_graphs(monkeypatch):
    """CUDA's graph, stream and capture calls replaced by plain re-execution, so that `BatchGraphedStep`'s logic
    runs on CPU. Like a real graph, a replay reads the static inputs and the cache buffers bound when it was
    captured, whatever is bound now (so a graph kept past its buffers shows). Yields the captures made."""
    from engine.batch_cache import _point
    from engine.batch_graph import BatchGraphedStep
    from tests.fake_cuda import fake_cuda_graph_calls

    captures = []

    def bound(lm):
        return [(kvc._buffers["kv"], *((c.k, c.v, c.mask) if c is not None else ())) for kvc, c in lm.attention_slots()]

    class FakeGraph:
        def replay(self):
            step, c, buffers = self.owner
            now = bound(step.lm)
            _point(step.lm.attention_slots(), buffers)
            try:
                c.logits.copy_(step._run(c.tokens, c.input_pos))
            finally:
                _point(step.lm.attention_slots(), now)

    static = fake_cuda_graph_calls(monkeypatch, FakeGraph)
    original = BatchGraphedStep._capture

    def capture(self, *a):
        c = original(self, *a)
        c.graph.owner = (self, c, bound(self.lm))
        captures.append(c)
        return c

    monkeypatch.setattr(BatchGraphedStep, "_capture", capture)
    yield captures
    assert static and all(static)  # every capture ran under static_shapes


def test_batch_graphs_give_the_eager_batch_codes(mono_model, faked_cuda_graphs):
    """The graphed batch step (whole cache under per-row masks, one graph per row bucket, captured again when the
    cache grows) samples what the eager step (each round narrowed to its longest row) samples."""
    mono_model.lm.compiled_steps.pop("batch-graph", None)
    runs = {}
    for mode in ("eager", "graph"):
        engine = BatchEngine(mono_model, step_mode=mode)
        try:
            runs[mode] = batched(engine, REQUESTS)
            assert engine.stats.rows / engine.stats.rounds > 2
        finally:
            engine.close()
    for (prompt, _, _), a, b in zip(REQUESTS, runs["eager"], runs["graph"]):
        assert torch.equal(a, b), prompt
    step = mono_model.lm.compiled_steps.pop("batch-graph")
    assert not step.failed and {c.key[0] for c in faked_cuda_graphs} >= {2, 4, 8}  # buckets of 1, 2 and 4 requests


def test_a_failed_batch_capture_stays_eager_and_warns(mono_model, monkeypatch, caplog):
    from engine.batch_graph import BatchGraphedStep

    def broken(self, *a):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(BatchGraphedStep, "_capture", broken)
    mono_model.lm.compiled_steps.pop("batch-graph", None)
    prompt, settings, frames = REQUESTS[2]
    engine = BatchEngine(mono_model, step_mode="graph")
    try:
        with caplog.at_level("WARNING"):
            codes = engine.token_stream(prompt, settings, frames=frames).run().clone()
    finally:
        engine.close()
    assert torch.equal(codes, alone(mono_model, prompt, settings, frames))
    assert sum("runs eagerly" in r.message for r in caplog.records) == 1
    assert mono_model.lm.compiled_steps.pop("batch-graph").failed


def test_a_stream_is_busy_only_while_the_engine_steps_it(mono_model):
    """`busy_seconds` counts the rounds a request took part in: an endless stream that has run as far ahead of its
    reader as it may stops adding to it, however long the reader waits (a jam's rate reads steps / busy)."""
    from engine.batched_stream import LOOKAHEAD_FRAMES

    engine = BatchEngine(mono_model)
    try:
        jam = engine.token_stream("dub", SamplingSettings(seed=9), frames=None)
        jam.step()
        while jam._settled - jam.new_frames < LOOKAHEAD_FRAMES:  # until it may run no further ahead
            time.sleep(0.01)
        time.sleep(0.05)  # a round that had begun ends
        steps, busy = jam.steps, jam.busy_seconds
        time.sleep(0.5)
        assert (jam.steps, jam.busy_seconds) == (steps, busy)  # waiting adds neither steps nor busy time
        assert busy > 0 and steps >= LOOKAHEAD_FRAMES
        jam.step()  # room for one more frame: it steps again, and is busy again
        t0 = time.perf_counter()
        while jam.steps == steps and time.perf_counter() - t0 < 30:
            time.sleep(0.01)
        time.sleep(0.05)
        assert jam.steps > steps and jam.busy_seconds > busy
        jam.release()
    finally:
        engine.close()
