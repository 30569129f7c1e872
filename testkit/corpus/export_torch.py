"""Export torchvision and timm classifiers with torch.onnx (TorchScript and dynamo exporters) into the corpus.

Run by ``make onnx-corpus`` in ``.venv-corpus-torch`` (testkit/corpus/requirements-torch.txt); writes
``testkit/corpus/models/<name>.onnx``, each stripped of its weights (testkit/onnx_corpus.py).  Weights are
each architecture's own initialisation; BatchNorm running statistics are first set from one train-mode
pass over a seeded batch, so the eval-mode network is normalised as a trained one would be.
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import onnx  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

from testkit.corpus import run, save  # noqa: E402


class _LayerVariety(torch.nn.Module):
    """The layers image models use beyond the classifiers above, in one small CNN (what the exporter writes for
    each: InstanceNormalization, Elu, PRelu, Selu, LpPool, ceil-mode MaxPool, ConvTranspose, nearest and bilinear
    Resize, Softplus, Softsign, LeakyRelu, Mish, Tanh, tanh-approximated Gelu, GlobalMaxPool, LogSoftmax)."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Conv2d(3, 16, 3, stride=2)
        self.norm = nn.InstanceNorm2d(16, affine=True)
        self.dilated = nn.Conv2d(16, 16, 3, padding=2, dilation=2)
        self.prelu = nn.PReLU(16)
        self.grouped = nn.Conv2d(16, 32, 3, padding=1, groups=4)
        self.lp = nn.LPPool2d(2, 2)
        self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.up = nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, output_padding=1)
        self.mix = nn.Conv2d(16, 24, 1)
        self.fc = nn.Linear(48, 10)

    def forward(self, x):
        f = torch.nn.functional
        x = f.pad(x, (0, 1, 0, 1))  # TF-style "SAME" for the stride-2 stem
        x = f.elu(self.norm(self.stem(x)))
        x = self.prelu(self.dilated(x))
        x = f.selu(self.grouped(x))
        x = self.pool(self.lp(x))
        x = self.up(x)
        x = f.interpolate(x, scale_factor=2, mode="nearest")
        x = f.interpolate(x, size=(40, 40), mode="bilinear", align_corners=False)
        x = f.softsign(f.softplus(x)) + f.leaky_relu(x, 0.1)
        x = f.mish(self.mix(x))
        x = f.gelu(torch.tanh(x), approximate="tanh")
        pooled = torch.cat([f.adaptive_max_pool2d(x, 1), f.adaptive_avg_pool2d(x, 1)], dim=1).flatten(1)
        return f.log_softmax(self.fc(pooled), dim=1)


class _Arithmetic(torch.nn.Module):
    """Element-wise and reduction arithmetic as exporters write it: Abs, Neg, Exp, Log, Reciprocal, Max, Min,
    mean of several, ReduceSum/Max/Min/L2, Tile, Sqrt, Pow, Div with broadcasting."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 4 + 8, 10)

    def forward(self, x):
        y = self.conv(x)
        a, b = y.abs(), torch.exp(-(y.clamp(-4, 4)))
        c = torch.log(a + 1.0) * torch.reciprocal(b + 1.0) - y.neg()
        m = torch.maximum(a, c) + torch.minimum(b, c)
        m = torch.stack([a, b, m]).mean(dim=0)
        stats = [m.sum(dim=(2, 3)) / 1024, m.amax(dim=(2, 3)), m.amin(dim=(2, 3)),
                 torch.linalg.vector_norm(m, dim=(2, 3)) / 32]
        tiled = (m.mean(dim=(2, 3), keepdim=True).repeat(1, 1, 2, 2) ** 2).sqrt().flatten(1)[:, ::4]
        return self.fc(torch.cat(stats + [tiled], dim=1))


class _TwoImages(torch.nn.Module):
    """A siamese pair: two image inputs (what the importer must refuse in one line)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)

    def forward(self, a, b):
        return (self.conv(a) - self.conv(b)).mean(dim=(2, 3))


class _GridSample(torch.nn.Module):
    """A spatial-transformer head: GridSample, which MXNet 1.9's converter does not take."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        grid = torch.linspace(-0.9, 0.9, 32 * 32 * 2).reshape(1, 32, 32, 2).expand(x.shape[0], 32, 32, 2)
        y = torch.nn.functional.grid_sample(self.conv(x), grid, align_corners=False)
        return self.fc(y.mean(dim=(2, 3)))


# name: (family, builder, input size, exporter, opset, dynamic batch)
TV = torchvision.models
MODELS = {
    "resnet18-torchscript-op11": ("torchvision", lambda: TV.resnet18(), 224, "torchscript", 11, True),
    "resnet18-dynamo-op18-fixedbatch": ("torchvision", lambda: TV.resnet18(), 224, "dynamo", 18, False),
    "mobilenet_v2-torchscript-op13": ("torchvision", lambda: TV.mobilenet_v2(), 224, "torchscript", 13, True),
    "mobilenet_v3_small-torchscript-op17": ("torchvision", lambda: TV.mobilenet_v3_small(), 224, "torchscript", 17,
                                            True),
    "mobilenet_v3_small-dynamo-op21": ("torchvision", lambda: TV.mobilenet_v3_small(), 224, "dynamo", 21, True),
    "mobilenet_v3_small-dynamo-op18": ("torchvision", lambda: TV.mobilenet_v3_small(), 224, "dynamo", 18, True),
    "efficientnet_b0-torchscript-op13": ("torchvision", lambda: TV.efficientnet_b0(), 224, "torchscript", 13, True),
    "regnet_y_400mf-torchscript-op17": ("torchvision", lambda: TV.regnet_y_400mf(), 224, "torchscript", 17, True),
    "densenet121-torchscript-op11": ("torchvision", lambda: TV.densenet121(), 224, "torchscript", 11, True),
    "convnext_tiny-torchscript-op17": ("torchvision", lambda: TV.convnext_tiny(), 224, "torchscript", 17, True),
    "squeezenet1_1-torchscript-op11": ("torchvision", lambda: TV.squeezenet1_1(), 224, "torchscript", 11, True),
    "shufflenet_v2_x0_5-torchscript-op13": ("torchvision", lambda: TV.shufflenet_v2_x0_5(), 224, "torchscript", 13,
                                            True),
    "googlenet-torchscript-op13": ("torchvision", lambda: TV.googlenet(aux_logits=False, init_weights=True), 224,
                                   "torchscript", 13, True),
    "inception_v3-torchscript-op11": ("torchvision", lambda: TV.inception_v3(aux_logits=False, init_weights=True), 299,
                                      "torchscript", 11, True),
    "vit_tiny_patch16_224-torchscript-op17": ("timm", lambda: timm.create_model("vit_tiny_patch16_224"), 224,
                                              "torchscript", 17, True),
    "deit_tiny_patch16_224-dynamo-op18": ("timm", lambda: timm.create_model("deit_tiny_patch16_224"), 224, "dynamo",
                                          18, True),
    # timm's attention is aten::scaled_dot_product_attention, which the TorchScript exporter writes from opset 14
    "deit_tiny_patch16_224-torchscript-op14": ("timm", lambda: timm.create_model("deit_tiny_patch16_224"), 224,
                                               "torchscript", 14, True),
    # CLIP's image tower as timm builds it (pre-norm, QuickGELU), at 4 blocks of width 256 to keep CI small
    "clip_vit_b32_4blocks-torchscript-op17": ("timm", lambda: timm.create_model(
        "vit_base_patch32_clip_224", embed_dim=256, depth=4, num_heads=4), 224, "torchscript", 17, True),
    "mobilenetv3_small_100-timm-torchscript-op13": ("timm", lambda: timm.create_model("mobilenetv3_small_100"), 224,
                                                    "torchscript", 13, True),
    "efficientnet_b0-timm-dynamo-op18": ("timm", lambda: timm.create_model("efficientnet_b0"), 224, "dynamo", 18,
                                         True),
    "convnext_atto-timm-torchscript-op17": ("timm", lambda: timm.create_model("convnext_atto"), 224, "torchscript",
                                            17, True),
    # one small CNN each, for the operators the classifiers above do not write
    "layer_variety-torchscript-op13": ("layers", _LayerVariety, 64, "torchscript", 13, True),
    "layer_variety-torchscript-op17": ("layers", _LayerVariety, 64, "torchscript", 17, True),
    "layer_variety-dynamo-op18": ("layers", _LayerVariety, 64, "dynamo", 18, True),
    "arithmetic-torchscript-op11": ("layers", _Arithmetic, 32, "torchscript", 11, True),
    "arithmetic-dynamo-op18": ("layers", _Arithmetic, 32, "dynamo", 18, True),
    # a non-square fixed input (for --image-size HxW)
    "mobilenet_v2-torchscript-op13-96x160": ("torchvision", lambda: TV.mobilenet_v2(), (96, 160), "torchscript", 13,
                                             True),
}


# what must be refused: name -> (module, example inputs, input names)
REFUSED = {
    "refused-two-images-torchscript-op17": (_TwoImages, lambda: (torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)),
                                            ["a", "b"]),
    "refused-gridsample-torchscript-op17": (_GridSample, lambda: (torch.randn(1, 3, 32, 32),), ["input"]),
    "refused-tabular-mlp-torchscript-op17": (lambda: torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(),
                                                                        torch.nn.Linear(32, 2)),
                                             lambda: (torch.randn(1, 16),), ["features"]),
}


def export_refused(name: str) -> str:
    build, inputs, names = REFUSED[name]
    torch.manual_seed(0)
    model = build().eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.onnx")
        torch.onnx.export(model, inputs(), path, dynamo=False, opset_version=17, input_names=names,
                          dynamic_axes={n: {0: "batch"} for n in names})
        proto = onnx.load(path)
    source = {"family": "refused", "exporter": "torch.onnx (torchscript)", "torch": torch.__version__.split("+")[0],
              "opset": 17}
    return save(name, proto, source)


def _calibrate_batchnorm(model: torch.nn.Module, height: int, width: int) -> None:
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the pass
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, height, width, generator=torch.Generator().manual_seed(1)))


def export(name: str) -> str:
    family, build, size, exporter, opset, dynamic = MODELS[name]
    torch.manual_seed(0)
    model = build()
    height, width = (size, size) if isinstance(size, int) else size
    _calibrate_batchnorm(model, height, width)
    model.eval()
    x = torch.randn(1, 3, height, width)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.onnx")
        if exporter == "dynamo":
            shapes = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic else None
            torch.onnx.export(model, (x,), path, dynamo=True, opset_version=opset, dynamic_shapes=shapes,
                              input_names=["x"])
        else:
            torch.onnx.export(model, (x,), path, dynamo=False, opset_version=opset, input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "batch"}} if dynamic else None)
        proto = onnx.load(path)  # external data (dynamo writes it) read back in
    source = {"family": family, "exporter": f"torch.onnx ({exporter})", "torch": torch.__version__.split("+")[0],
              "torchvision": torchvision.__version__.split("+")[0], "timm": timm.__version__, "opset": opset,
              "layout": "NCHW", "size": [height, width], "dynamic_batch": dynamic}
    return save(name, proto, source)


if __name__ == "__main__":
    run(lambda name: export_refused(name) if name in REFUSED else export(name), list(MODELS) + list(REFUSED))
