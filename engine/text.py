"""Text conditioning: the checkpoint's T5 encoder (through transformers) and its projection to the LM.

T5 comes in the precision the loader chose (engine/assemble.py `text_dtype`): fp32, or bf16 storage and compute
for bf16 and int8 models (half its memory: 220 MB less for t5-base; T5 was trained in bf16), with the layers
transformers keeps in fp32 for stability (T5's `wo`) kept there. The projected states are always fp32.

The null condition used for classifier-free guidance is the empty description with its mask zeroed, so its
projected states are all zeros; an empty prompt is therefore unconditional generation.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor


class TextConditioner(nn.Module):
    def __init__(self, tokenizer, t5: nn.Module, proj: nn.Linear | None):
        super().__init__()
        self.tokenizer = tokenizer
        self.t5 = t5.eval()
        self.proj = proj  # None when T5's width already equals the LM's (the checkpoint then has no projection)

    @property
    def device(self) -> torch.device:
        return next(self.t5.parameters()).device

    @torch.inference_mode()
    def encode(self, prompt: str) -> Tensor:
        """Projected, masked states [1, S, D] in fp32; zeros [1, 1, D] for an empty prompt."""
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
