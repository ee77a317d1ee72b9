"""The zoo: architectures people prune, each built small from a fixed seed, with its own data.

Hugging Face models are built with transformers from small configs (random init: nothing
downloads; the tests run with HF_HUB_OFFLINE=1) and taken as they come: they return a ModelOutput,
and their data is what THE CONTRACT of the wave (notes/COMMON3.md) says a user passes: an
``(inputs dict, labels)`` pair, or a Dataset of dict batches with the labels under ``"labels"``.
The rest are written in plain torch (torchvision and timm do not import beside the CPU torch):
LSTM and GRU text classifiers, and the blocks that make ShuffleNetV2, MobileNetV3 and SqueezeNet
what they are.

Each entry of :data:`ZOO` builds a fresh model and fresh data on every call, seeded, so no test
sees another's state. Sizes are chosen so the whole zoo runs in about a minute on one core.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here downloads; say so to transformers too

CLASSES = 3
SAMPLES = 48
IMAGE = (3, 32, 32)
TOKENS = 16
VOCAB = 64


# ---------------------------------------------------------------------------- data

def _labels(n: int, gen: torch.Generator) -> torch.Tensor:
    """Class indices with every class present, in a seeded order."""
    return (torch.arange(n) % CLASSES)[torch.randperm(n, generator=gen)]


def images(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((SAMPLES, *IMAGE), generator=gen), _labels(SAMPLES, gen)


def text(seed: int = 1) -> dict[str, torch.Tensor]:
    """input_ids (1..VOCAB-1; 0 is padding), an attention_mask padding the tail of every third
    sample, token_type_ids marking a second segment, and class labels."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (SAMPLES, TOKENS), generator=gen)
    mask = torch.ones(SAMPLES, TOKENS, dtype=torch.long)
    mask[::3, TOKENS - 5:] = 0
    ids = ids * mask  # padded positions hold the pad token 0
    types = torch.zeros(SAMPLES, TOKENS, dtype=torch.long)
    types[:, TOKENS // 2:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": _labels(SAMPLES, gen)}


class DictBatches(Dataset):
    """A Dataset of dict samples (each key one sample's tensor, the class under ``"labels"``), the
    way a Hugging Face pipeline hands data over; a DataLoader collates them into dict batches."""

    def __init__(self, columns: dict[str, torch.Tensor]):
        self.columns = columns

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.columns.items()}


def batches(data, batch_size: int = 16):
    """``(inputs, labels)`` batches of zoo data, for the tests' own loops: ``inputs`` is a tensor or
    a dict of keyword arguments for the model. Accepts exactly the forms the zoo builders make: an
    ``(inputs, labels)`` pair (inputs a tensor or a dict) and a DataLoader of dict batches."""
    if isinstance(data, DataLoader):
        for batch in data:
            batch = dict(batch)
            labels = batch.pop("labels")
            yield batch, labels
        return
    x, y = data
    for i in range(0, len(y), batch_size):
        if isinstance(x, dict):
            yield {k: v[i:i + batch_size] for k, v in x.items()}, y[i:i + batch_size]
        else:
            yield x[i:i + batch_size], y[i:i + batch_size]


def logits(out) -> torch.Tensor:
    """The tensor of outputs a test compares: a ModelOutput's ``logits``, or the tensor itself."""
    return out if isinstance(out, torch.Tensor) else out.logits


def call(model: nn.Module, inputs) -> torch.Tensor:
    """The model's own outputs on one batch (``model(**inputs)`` for a dict), as logits."""
    return logits(model(**inputs) if isinstance(inputs, dict) else model(inputs))


# ---------------------------------------------------------------------------- until "hf" lands

class LogitsOnly(nn.Module):
    """``model(**{key: x}).logits`` as a module taking one tensor and returning one: the wrapper a
    user needed before Pruner took Hugging Face models as they are (issue 11, point 1). It passes
    one tensor only, so no attention_mask: the zoo uses it ONLY for the ``[logits_only]`` cases,
    which exercise layers, heads and export on this model while dict batches are not yet taken."""

    def __init__(self, model: nn.Module, key: str):
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x):
        return self.model(**{self.key: x}).logits


def logits_only(model: nn.Module, key: str) -> LogitsOnly:
    """``model`` wrapped to take the tensor ``key`` and return its logits (see :class:`LogitsOnly`)."""
    return LogitsOnly(model, key)


# ---------------------------------------------------------------------------- Hugging Face models

def _seeded(build: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return build()


def hf_resnet() -> nn.Module:
    from transformers import ResNetConfig, ResNetForImageClassification
    return _seeded(lambda: ResNetForImageClassification(ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
        num_labels=CLASSES)))


def hf_mobilenet_v2() -> nn.Module:
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification
    return _seeded(lambda: MobileNetV2ForImageClassification(MobileNetV2Config(
        num_channels=3, image_size=32, depth_multiplier=0.25, min_depth=4, depth_divisible_by=4,
        finegrained_output=False, num_labels=CLASSES)))


def hf_convnext() -> nn.Module:
    from transformers import ConvNextConfig, ConvNextForImageClassification
    return _seeded(lambda: ConvNextForImageClassification(ConvNextConfig(
        num_channels=3, patch_size=4, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], image_size=32,
        num_labels=CLASSES)))


def hf_vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification
    return _seeded(lambda: ViTForImageClassification(ViTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=32, num_labels=CLASSES, attn_implementation="eager")))


def hf_bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification
    return _seeded(lambda: BertForSequenceClassification(BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32,
        max_position_embeddings=TOKENS, type_vocab_size=2, num_labels=CLASSES, attn_implementation="eager")))


def hf_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2ForSequenceClassification
    return _seeded(lambda: GPT2ForSequenceClassification(GPT2Config(
        vocab_size=VOCAB, n_positions=TOKENS, n_embd=16, n_layer=2, n_head=4, pad_token_id=0,
        bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1,
        num_labels=CLASSES, attn_implementation="eager")))


def hf_llama() -> nn.Module:
    """A tiny Llama-style causal LM: grouped-query attention (4 query heads over 2 key/value
    heads), RMSNorm, a gated (SwiGLU) MLP, rotary positions."""
    from transformers import LlamaConfig, LlamaForCausalLM
    return _seeded(lambda: LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=4, max_position_embeddings=TOKENS, tie_word_embeddings=False,
        attn_implementation="eager")))


# ---------------------------------------------------------------------------- plain torch models

class RecurrentClassifier(nn.Module):
    """Embedding -> one recurrent layer (LSTM or GRU) -> Linear on the last hidden state."""

    def __init__(self, cell: type[nn.RNNBase]):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.rnn = cell(16, 16, batch_first=True)
        self.head = nn.Linear(16, CLASSES)

    def forward(self, input_ids):
        out, _ = self.rnn(self.embed(input_ids))
        return self.head(out[:, -1])


def conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([act()] if act else []))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's unit: stride 1 splits the channels in two, keeps one half and runs the other
    through 1x1 -> depthwise 3x3 -> 1x1; stride 2 runs both branches on all channels. Then
    concatenate and shuffle the channels."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        half = cout // 2
        into = cin if stride == 2 else cin // 2
        if stride == 2:
            self.left = nn.Sequential(conv_bn(cin, cin, 3, 2, groups=cin, act=None), conv_bn(cin, half))
        self.right = nn.Sequential(conv_bn(into, half), conv_bn(half, half, 3, stride, groups=half, act=None),
                                   conv_bn(half, half))

    def forward(self, x):
        if self.stride == 1:
            keep, x = x.chunk(2, dim=1)
            out = torch.cat([keep, self.right(x)], dim=1)
        else:
            out = torch.cat([self.left(x), self.right(x)], dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 8, 3, 2)
        # a split unit between two downsampling ones: a concatenation feeds a depthwise conv
        self.stage = nn.Sequential(ShuffleUnit(8, 16, 2), ShuffleUnit(16, 16, 1), ShuffleUnit(16, 32, 2))
        self.last = conv_bn(32, 32)
        self.fc = nn.Linear(32, CLASSES)

    def forward(self, x):
        return self.fc(self.last(self.stage(self.stem(x))).mean((2, 3)))


class SqueezeExcite(nn.Module):
    """Pool -> 1x1 reduce -> ReLU -> 1x1 expand -> hardsigmoid, scaling the channels."""

    def __init__(self, c: int, reduced: int):
        super().__init__()
        self.reduce = nn.Conv2d(c, reduced, 1)
        self.expand = nn.Conv2d(reduced, c, 1)

    def forward(self, x):
        s = nn.functional.adaptive_avg_pool2d(x, 1)
        return x * nn.functional.hardsigmoid(self.expand(torch.relu(self.reduce(s))))


class InvertedResidualSE(nn.Module):
    """MobileNetV3's block: 1x1 expand (hardswish) -> depthwise 3x3 (hardswish) -> squeeze-excite
    -> 1x1 project; a residual addition when the shapes allow."""

    def __init__(self, cin: int, hidden: int, cout: int, stride: int):
        super().__init__()
        self.expand = conv_bn(cin, hidden, act=nn.Hardswish)
        self.depthwise = conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.Hardswish)
        self.se = SqueezeExcite(hidden, max(hidden // 4, 4))
        self.project = conv_bn(hidden, cout, act=None)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        h = self.project(self.se(self.depthwise(self.expand(x))))
        return x + h if self.residual else h


class MobileNetV3Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 8, 3, 2, act=nn.Hardswish)
        self.blocks = nn.Sequential(InvertedResidualSE(8, 16, 8, 1), InvertedResidualSE(8, 24, 12, 2))
        self.last = conv_bn(12, 24, act=nn.Hardswish)
        self.classifier = nn.Sequential(nn.Linear(24, 16), nn.Hardswish(), nn.Linear(16, CLASSES))

    def forward(self, x):
        return self.classifier(self.last(self.blocks(self.stem(x))).mean((2, 3)))


class Fire(nn.Module):
    """SqueezeNet's fire module: a 1x1 squeeze, then 1x1 and 3x3 expands concatenated."""

    def __init__(self, cin: int, squeeze: int, expand: int):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x):
        s = torch.relu(self.squeeze(x))
        return torch.cat([torch.relu(self.expand1x1(s)), torch.relu(self.expand3x3(s))], dim=1)


class SqueezeNetTiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
                                      Fire(8, 4, 8), Fire(16, 4, 8))
        # SqueezeNet's classifier: a 1x1 conv to the classes, then a global average
        self.classifier = nn.Sequential(nn.Conv2d(16, CLASSES, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.classifier(self.features(x))


def lstm() -> nn.Module:
    return _seeded(lambda: RecurrentClassifier(nn.LSTM))


def gru() -> nn.Module:
    return _seeded(lambda: RecurrentClassifier(nn.GRU))


def shufflenet_v2() -> nn.Module:
    return _seeded(ShuffleNetV2Tiny)


def mobilenet_v3() -> nn.Module:
    return _seeded(MobileNetV3Tiny)


def squeezenet() -> nn.Module:
    return _seeded(SqueezeNetTiny)


# ---------------------------------------------------------------------------- the zoo

def _image_pair():
    return images()


def _pixel_pair():
    x, y = images()
    return {"pixel_values": x}, y


def _pixel_batches():
    x, y = images()
    return DataLoader(DictBatches({"pixel_values": x, "labels": y}), batch_size=16)


def _text_batches():
    return DataLoader(DictBatches(text()), batch_size=16)


def _text_pair(*keys: str):
    def make():
        t = text()
        return {k: t[k] for k in keys}, t["labels"]
    return make


def _ids_pair():
    t = text()
    return t["input_ids"], t["labels"]


def _lm_pair():
    """A causal LM's data as Hugging Face's collators make it: input_ids, with labels = input_ids
    (the model shifts them itself) and -100 (ignored) at the padded positions."""
    t = text()
    labels = t["input_ids"].masked_fill(t["attention_mask"] == 0, -100)
    return {"input_ids": t["input_ids"], "attention_mask": t["attention_mask"]}, labels


def next_token_accuracy(outputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of each position's prediction of the next token (positions labelled -100
    not counted): the metric a language model is measured by."""
    predicted, target = outputs[:, :-1].argmax(-1), labels[:, 1:]
    counted = target != -100
    return int((predicted == target)[counted].sum()) / int(counted.sum())


def next_token_loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the next token over the counted positions: a causal LM's own loss."""
    return nn.functional.cross_entropy(outputs[:, :-1].reshape(-1, outputs.shape[-1]), labels[:, 1:].reshape(-1),
                                       ignore_index=-100)


def token_accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy per position against targets given per position (-100 not counted)."""
    counted = targets != -100
    return int((outputs.argmax(-1) == targets)[counted].sum()) / int(counted.sum())


def token_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy per position against targets given per position (-100 not counted)."""
    return nn.functional.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1), ignore_index=-100)


@dataclass(frozen=True)
class Heads:
    """One attention block, by parameter name. ``q``, ``k``, ``v``: (parameter, first output
    feature) of each projection (GPT-2 packs all three in one Conv1D, at offsets 0, E and 2E);
    ``o``: the output projection, whose input features are the heads'. ``transposed``: the
    weights are transformers' Conv1D, stored [in, out]. ``kv_heads`` < ``heads``: grouped-query
    attention (query head h reads key/value group h // (heads // kv_heads))."""

    q: tuple[str, int]
    k: tuple[str, int]
    v: tuple[str, int]
    o: str
    heads: int
    kv_heads: int
    head_dim: int
    transposed: bool = False


def _vit_heads(prefix: str) -> list[Heads]:
    base = prefix + "vit.layers.{}.attention.{}_proj.weight"
    return [Heads(*((base.format(i, p), 0) for p in "qkv"), base.format(i, "o"), 4, 4, 4) for i in range(2)]


def _bert_heads(prefix: str) -> list[Heads]:
    base = prefix + "bert.encoder.layer.{}.attention."
    return [Heads(*((base.format(i) + f"self.{p}.weight", 0) for p in ("query", "key", "value")),
                  base.format(i) + "output.dense.weight", 4, 4, 4) for i in range(2)]


def _gpt2_heads(prefix: str) -> list[Heads]:
    base = prefix + "transformer.h.{}.attn.c_{}.weight"
    return [Heads(*((base.format(i, "attn"), 16 * s) for s in range(3)), base.format(i, "proj"), 4, 4, 4,
                  transposed=True) for i in range(2)]


def _llama_heads(prefix: str) -> list[Heads]:
    base = prefix + "model.layers.{}.self_attn.{}_proj.weight"
    return [Heads(*((base.format(i, p), 0) for p in "qkv"), base.format(i, "o"), 4, 2, 4) for i in range(2)]


@dataclass(frozen=True)
class Entry:
    """One model of the zoo.

    ``build()`` gives a fresh seeded model; ``data()`` fresh data in the form a user passes.
    ``hf``: built with transformers (returns a ModelOutput). ``key``: the one input tensor
    :func:`logits_only` passes. ``language``: a causal LM (outputs [batch, tokens, vocabulary],
    labels = input_ids). ``options``: keyword arguments for the Pruner (and pl.explore).
    ``attention``: the attention blocks' parameter names, given the ``prefix`` of the model's
    parameter names (``"model."`` behind :func:`logits_only`)."""

    name: str
    build: Callable[[], nn.Module]
    data: Callable[[], object]
    hf: bool = False
    key: str | None = None
    language: bool = False
    options: dict = field(default_factory=dict)
    attention: Callable[[str], list[Heads]] | None = None
    prefix: str = ""

    def heads(self) -> list[Heads]:
        """The attention blocks of a transformer (empty for the rest)."""
        return self.attention(self.prefix) if self.attention else []

    def wrapped(self) -> "Entry":
        """The ``[logits_only]`` variant: the model behind :func:`logits_only`, its data the one
        tensor under ``key`` (labels as before)."""
        def data():
            tensors = {}
            for inputs, labels in batches(self.data()):
                tensors.setdefault("x", []).append(inputs[self.key])
                tensors.setdefault("y", []).append(labels)
            return torch.cat(tensors["x"]), torch.cat(tensors["y"])
        # a language model's metric and loss said by hand: the Pruner hands them the targets it
        # scores, for labels = input_ids already shifted to the next token (so they do not shift)
        options = {"metric": token_accuracy, "loss": token_loss} if self.language else {}
        return Entry(f"{self.name}[logits_only]", lambda: logits_only(self.build(), self.key), data,
                     hf=False, key=None, language=self.language, options=options,
                     attention=self.attention, prefix="model.")


HF = [
    Entry("resnet", hf_resnet, _pixel_pair, hf=True, key="pixel_values"),
    Entry("mobilenet_v2", hf_mobilenet_v2, _pixel_batches, hf=True, key="pixel_values"),
    Entry("convnext", hf_convnext, _pixel_pair, hf=True, key="pixel_values"),
    Entry("vit", hf_vit, _pixel_batches, hf=True, key="pixel_values", attention=_vit_heads),
    Entry("bert", hf_bert, _text_batches, hf=True, key="input_ids", attention=_bert_heads),
    Entry("gpt2", hf_gpt2, _text_pair("input_ids", "attention_mask"), hf=True, key="input_ids",
          attention=_gpt2_heads),
    Entry("llama", hf_llama, _lm_pair, hf=True, key="input_ids", language=True, attention=_llama_heads),
]
PLAIN = [
    Entry("lstm", lstm, _ids_pair),
    Entry("gru", gru, _ids_pair),
    Entry("shufflenet_v2", shufflenet_v2, _image_pair),
    Entry("mobilenet_v3", mobilenet_v3, _image_pair),
    Entry("squeezenet", squeezenet, _image_pair),
]
# name -> Entry: every model as it comes, and each Hugging Face model behind logits_only as well
ZOO = {e.name: e for e in HF + [e.wrapped() for e in HF] + PLAIN}
