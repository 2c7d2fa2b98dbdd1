"""The bridge's allocator policy after loading (`bridge.model_loading.returning_freed_memory`): the large
temporaries one prefill frees are reused by the next, not given back to the OS and faulted in again (a quarter of a
window slide's time, benchmarks/RESULTS.md). Counted in page faults, not time, so a busy host cannot move it; in a
fresh process each (the policy is process-wide), with a negative control at glibc's default trim threshold."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent(
    """
    import json, resource, sys, threading
    import torch
    import bridge.model_loading as ml
    from engine.assemble import build_lm
    from engine.lm import LMConfig, MusicGenLM

    ml.RUNNING_TRIM_THRESHOLD = int(sys.argv[1])
    torch.manual_seed(0)
    cfg = LMConfig(n_layers=2)  # musicgen-small's widths: its prefill's temporaries are MBs each
    # bf16 weights: the prefill's activations go to bf16 and back around each matmul, temporaries of a few MB in
    # turn, as the w8a8 model's widened weights are (their prefill needs AMX; this runs on any CPU)
    with ml.returning_freed_memory():
        lm = build_lm(cfg, MusicGenLM(cfg).state_dict(), torch.device("cpu"), torch.bfloat16)
    faults = []

    def prefills():  # on a thread of its own, as the engine's prefills run
        lm.setup_caches(2, 400)
        lm.set_condition(torch.randn(2, 12, cfg.dim))
        T = 200  # a window slide's kept columns
        h = lm.embed(torch.randint(0, cfg.card, (2, cfg.n_codebooks, T)))
        with torch.inference_mode():
            for _ in range(5):
                before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
                lm(h, torch.arange(T), kv_len=T)
                faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)

    t = threading.Thread(target=prefills)
    t.start()
    t.join()
    print(json.dumps(faults))
    """
)


def _faults(trim_threshold: int) -> list[int]:
    out = subprocess.run([sys.executable, "-c", PROBE, str(trim_threshold)], capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_prefills_freed_temporaries_are_reused_not_faulted_in_again():
    from bridge.model_loading import RUNNING_TRIM_THRESHOLD

    kept = _faults(RUNNING_TRIM_THRESHOLD)
    given_back = _faults(128 << 10)  # negative control: glibc's default trim threshold
    # The first prefill faults its temporaries in either way. After it, the policy's prefills reuse them: measured 0-1
    # faults each on an Intel Xeon; on an AMD EPYC the heap grows once more (264 faults in the third prefill), then 0.
    # The default faults ~11-14 MB in again every time (2,600-3,600 faults each).
    assert sum(kept[1:]) < 1024 and kept[-1] < 64, kept
    assert min(given_back[1:]) > 1024, given_back
