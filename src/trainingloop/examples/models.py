"""The models of the examples, written here (no torchvision), after their published code."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["GPT", "MLP", "EncoderClassifier", "LeNet", "ResNetCIFAR", "language_model_loss",
           "xavier_init"]


def xavier_init(module: nn.Module) -> None:
    """d2l's ``init_cnn``: Xavier-uniform weights for linear and convolution layers."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.xavier_uniform_(module.weight)


def language_model_loss(output: Tensor, target: Tensor) -> Tensor:
    """Mean cross-entropy of (batch, time, vocabulary) logits against (batch, time) tokens."""
    return nn.functional.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))


class MLP(nn.Sequential):
    """784-512-512-10 with ReLU (MindSpore's quick-start network)."""

    def __init__(self, inputs: int = 784, hidden: int = 512, classes: int = 10) -> None:
        super().__init__(nn.Flatten(), nn.Linear(inputs, hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes))


class LeNet(nn.Sequential):
    """LeNet-5 for 1×28×28 inputs. The defaults are d2l's (sigmoid, average pooling); S4TF's
    uses ``activation=nn.ReLU``; a modern one also ``pool=nn.MaxPool2d``."""

    def __init__(self, classes: int = 10, activation: type[nn.Module] = nn.Sigmoid,
                 pool: type[nn.Module] = nn.AvgPool2d) -> None:
        super().__init__(
            nn.Conv2d(1, 6, kernel_size=5, padding=2), activation(), pool(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5), activation(), pool(kernel_size=2, stride=2),
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), activation(),
            nn.Linear(120, 84), activation(), nn.Linear(84, classes))


class _BasicBlock(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False),
                                          nn.BatchNorm2d(outputs))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetCIFAR(nn.Module):
    """He et al.'s CIFAR ResNet-(6n+2): ``depth`` 20 or 56 (S4TF's ``resNet56`` option)."""

    def __init__(self, depth: int = 20, classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"ResNetCIFAR depth must be 6n+2 (20, 32, 44, 56), got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())
        layers, inputs = [], 16
        for outputs, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(_BasicBlock(inputs, outputs, stride if i == 0 else 1))
                inputs = outputs
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.layers(self.stem(x)))


class EncoderClassifier(nn.Module):
    """A small BERT-style encoder (learned positions, pre-norm blocks) classifying from the
    first (``<cls>``) token; token id 0 is padding."""

    def __init__(self, vocabulary: int, classes: int = 2, width: int = 128, depth: int = 2,
                 heads: int = 4, max_length: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocabulary, width, padding_idx=0)
        self.positions = nn.Parameter(torch.zeros(1, max_length, width))
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)
        nn.init.normal_(self.positions, std=0.02)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.tokens(tokens) + self.positions[:, : tokens.shape[1]]
        x = self.encoder(x, src_key_padding_mask=tokens == 0)
        return self.head(self.norm(x[:, 0]))


class _CausalBlock(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width), nn.Dropout(dropout))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.attention(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """A small decoder-only transformer (nanoGPT's layout, tied input/output embeddings)."""

    def __init__(self, vocabulary: int, width: int = 128, depth: int = 2, heads: int = 4,
                 block_size: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocabulary, width)
        self.positions = nn.Embedding(block_size, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_CausalBlock(width, heads, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocabulary, bias=False)
        self.head.weight = self.tokens.weight  # weight tying
        self.apply(self._init)
        for name, parameter in self.named_parameters():
            if name.endswith("mlp.2.weight"):
                nn.init.normal_(parameter, std=0.02 / math.sqrt(2 * depth))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        length = tokens.shape[1]
        mask = torch.triu(torch.full((length, length), float("-inf"), device=tokens.device), 1)
        x = self.drop(self.tokens(tokens) + self.positions(torch.arange(length,
                                                                         device=tokens.device)))
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.norm(x))


class _NanoAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(width, 3 * width, bias=False)
        self.c_proj = nn.Linear(width, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        q, k, v = self.c_attn(x).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.heads, width // self.heads).transpose(1, 2)
                   for t in (q, k, v))
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(batch, length, width))


class _NanoBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, bias=False)
        self.attn = _NanoAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width, bias=False)
        self.c_fc = nn.Linear(width, 4 * width, bias=False)
        self.c_proj = nn.Linear(4 * width, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(nn.functional.gelu(self.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):
    """nanoGPT's model (Karpathy's ``model.py``, ``bias=False``, ``dropout=0``): pre-norm blocks
    with fused-QKV causal attention, tied embeddings, its initialisation; ``forward(idx,
    targets)`` returns ``(logits, loss)`` as nanoGPT's does."""

    def __init__(self, vocabulary: int, block_size: int = 64, n_layer: int = 4, n_head: int = 4,
                 n_embd: int = 128) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocabulary, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(_NanoBlock(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=False)
        self.lm_head = nn.Linear(n_embd, vocabulary, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        for name, parameter in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(positions)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None if targets is None else nn.functional.cross_entropy(
            logits.view(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss

    def optimizer(self, lr: float, weight_decay: float = 0.1,
                  betas: tuple[float, float] = (0.9, 0.99)) -> torch.optim.AdamW:
        """nanoGPT's AdamW: weight decay on the 2-D weights only."""
        parameters = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(
            [{"params": [p for p in parameters if p.dim() >= 2], "weight_decay": weight_decay},
             {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0}],
            lr=lr, betas=betas)
