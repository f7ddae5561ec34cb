"""Text-to-image DiT: a DiT conditioned on text features, with an optional text encoder trained with it.

    x [B, H, W, C], t [B], text → [B, H, W, C·(2 if learn_sigma else 1)]

`text` is a frozen encoder's output {'tokens', 'mask', 'pooled'} when `text_encoder` is None, else the
token ids {'token_ids' [B, L], 'mask' [B, L]} that `text_encoder` (whose params train with the DiT's)
encodes first.
"""
from typing import Optional

import flax.linen as nn

from vqdiff.models.dit import DiT


class TextToImageDiT(nn.Module):
    dit: DiT
    text_encoder: Optional[nn.Module] = None

    @property
    def learn_sigma(self) -> bool:
        return self.dit.learn_sigma

    @nn.compact
    def __call__(self, x, t, text, *, train: bool = False):
        if self.text_encoder is not None:
            tokens, mask, pooled = self.text_encoder(text["token_ids"], text["mask"])
            text = dict(tokens=tokens, mask=mask, pooled=pooled)
        return self.dit(x, t, None, text=text, train=train)
