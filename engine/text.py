"""Text conditioning: the checkpoint's T5 encoder (through transformers) and its projection to the LM.

T5 comes in the precision the loader chose (engine/assemble.py `text_dtype`): fp32, or bf16 storage and compute
for bf16 and int8 models (half its memory: 220 MB less for t5-base; T5 was trained in bf16), with the layers
transformers keeps in fp32 for stability (T5's `wo`) kept there. The projected states are always fp32.

The null condition used for classifier-free guidance is the empty description with its mask zeroed, so its
projected states are all zeros; an empty prompt is therefore unconditional generation.

T5 is a pure function of the prompt, so the states of the last few prompts are kept: the takes of a request, or
several requests with one prompt, arriving at once wait for one T5 pass instead of running one each.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import torch
import torch.nn as nn
from torch import Tensor

# A prompt is a few words: the tokenizer's own thread pool would only add threads beside the LM's (engine/threads.py).
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class TextConditioner(nn.Module):
    KEEP_PROMPTS = 8  # projected states kept, most recent prompts first ([1, S, D] fp32: a few kB to 100 kB each)

    def __init__(self, tokenizer, t5: nn.Module, proj: nn.Linear | None):
        super().__init__()
        self.tokenizer = tokenizer
        self.t5 = t5.eval()
        self.proj = proj  # None when T5's width already equals the LM's (the checkpoint then has no projection)
        self.passes = 0  # T5 passes run
        self._kept: OrderedDict[str, Tensor] = OrderedDict()
        self._running: dict[str, threading.Event] = {}  # prompts being encoded now, by whichever thread came first
        self._lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return next(self.t5.parameters()).device

    def encode(self, prompt: str) -> Tensor:
        """Projected, masked states [1, S, D] in fp32; zeros [1, 1, D] for an empty prompt. Shared: do not modify."""
        while True:
            with self._lock:
                if prompt in self._kept:
                    self._kept.move_to_end(prompt)
                    return self._kept[prompt]
                running = self._running.get(prompt)
                if running is None:
                    running = self._running[prompt] = threading.Event()
                    break
            running.wait()  # another thread's pass; if it failed, the loop runs our own
        try:
            states = self._encode(prompt)
            with self._lock:
                self._kept[prompt] = states
                while len(self._kept) > self.KEEP_PROMPTS:
                    self._kept.popitem(last=False)
        finally:
            with self._lock:
                del self._running[prompt]
            running.set()
        return states

    @torch.inference_mode()
    def _encode(self, prompt: str) -> Tensor:
        self.passes += 1
        if not prompt.strip():
            width = self.proj.out_features if self.proj is not None else self.t5.config.d_model
            return torch.zeros(1, 1, width, device=self.device)
        batch = self.tokenizer([prompt], return_tensors="pt", padding=True).to(self.device)
        states = self.t5(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        if self.proj is not None:
            states = self.proj(states.to(self.proj.weight.dtype)).float()
        return states.float() * batch["attention_mask"][..., None]

    def condition(self, prompt: str, guidance: bool) -> Tensor:
        """[cond; uncond] states [2, S, D] with guidance, [1, S, D] without."""
        cond = self.encode(prompt)
        return torch.cat([cond, torch.zeros_like(cond)]) if guidance else cond
