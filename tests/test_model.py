"""The zoo-format test model, and the production loader's checks on it."""

from __future__ import annotations

import os
import tempfile

import mxnet as mx
import numpy as np
import pytest

from common.errors import ModelError
from common.images import preprocess
from common.model import Predictor, top_k
from common.model_files import ModelSpec, fetch_model, read_labels
from common.model_graph import check_model
from testkit import zoo_builder
from testkit.testdata import cifar_like_png

pytestmark = pytest.mark.once  # the model's numbers: the same on either Spark line

ZOO_LAYERS = ["bn_data", "conv0", "bn0", "relu0", "stage1_unit1_bn1", "stage1_unit1_conv1", "stage1_unit1_sc",
              "stage1_unit2_conv2", "stage2_unit1_sc", "stage3_unit1_sc", "stage4_unit1_sc", "stage4_unit2_conv2",
              "bn1", "relu1", "pool1", "fc1", "softmax"]


def _load(model_files):
    sym = mx.sym.load_json(model_files[zoo_builder.SYMBOL_FILE].decode())
    params = mx.nd.load_frombuffer(model_files[zoo_builder.PARAMS_FILE])
    arg = {k[4:]: v for k, v in params.items() if k.startswith("arg:")}
    aux = {k[4:]: v for k, v in params.items() if k.startswith("aux:")}
    return sym, arg, aux


def test_plain_module_loads_it_with_zoo_names_and_shapes(model_files):
    sym, arg, aux = _load(model_files)
    layers = {n[: -len("_output")] for n in sym.get_internals().list_outputs() if n.endswith("_output")}
    assert set(ZOO_LAYERS) <= layers
    assert sym.list_arguments()[:2] == ["data", "bn_data_gamma"]  # bn_data is the first layer
    assert sym.list_outputs() == ["softmax_output"]
    assert arg["conv0_weight"].shape == (64, 3, 7, 7)
    assert arg["stage1_unit1_sc_weight"].shape == (64, 64, 1, 1)
    assert arg["stage4_unit2_conv2_weight"].shape == (512, 512, 3, 3)
    assert arg["fc1_weight"].shape == (1000, 512) and arg["fc1_bias"].shape == (1000,)
    assert aux["bn_data_moving_var"].shape == (3,)
    convs = [k for k in arg if k.endswith("_weight") and k != "fc1_weight"]
    assert len(convs) == 21  # conv0 + 8 units x 2 + one shortcut per stage
    assert len([k for k in aux if k.endswith("_moving_mean")]) == 19  # bn_data, bn0, 16 in units, bn1
    mod = mx.mod.Module(symbol=sym, context=mx.cpu(), label_names=["softmax_label"])
    mod.bind(for_training=False, data_shapes=[("data", (2, 3, 224, 224))], label_shapes=[("softmax_label", (2,))])
    mod.set_params(arg, aux)  # allow_missing=False: every parameter is there
    mod.forward(mx.io.DataBatch([mx.nd.array(np.stack([preprocess(cifar_like_png(i), "k") for i in range(2)]))]),
                is_train=False)
    probs = mod.get_outputs()[0].asnumpy()
    assert probs.shape == (2, 1000)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)


def test_synset_has_zoo_format(model_files):
    lines = model_files[zoo_builder.SYNSET_FILE].decode().splitlines()
    assert len(lines) == 1000
    for line in lines:
        wnid, _, name = line.partition(" ")
        assert len(wnid) == 9 and wnid[0] == "n" and wnid[1:].isdigit(), line
        assert "," in name
    assert read_labels("n01440764 tench, Tinca tinca\n", "s") == ("tench, Tinca tinca",)


def test_predictions_depend_on_the_image(model_files, tmp_path):
    for name, data in model_files.items():
        (tmp_path / name).write_bytes(data)
    spec = ModelSpec(str(tmp_path / zoo_builder.SYMBOL_FILE), str(tmp_path / zoo_builder.PARAMS_FILE),
                     str(tmp_path / zoo_builder.SYNSET_FILE))
    predictor = Predictor(spec)
    tops = []
    for start in range(0, 256, 64):
        batch = np.stack([preprocess(cifar_like_png(i, seed=42), "k") for i in range(start, start + 64)])
        ids, _ = top_k(predictor.predict(batch), 1)
        tops += ids[:, 0].tolist()
    assert len(set(tops)) >= 50, f"only {len(set(tops))} distinct top-1 classes over 256 images"


def test_builder_is_deterministic(model_files):
    again = zoo_builder.build_model(seed=0)
    assert again[zoo_builder.SYMBOL_FILE] == model_files[zoo_builder.SYMBOL_FILE]
    a = mx.nd.load_frombuffer(again[zoo_builder.PARAMS_FILE])
    b = mx.nd.load_frombuffer(model_files[zoo_builder.PARAMS_FILE])
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k].asnumpy(), b[k].asnumpy(), rtol=1e-5, atol=1e-6, err_msg=k)


def _spec_with(tmp_path, model_files, **replace) -> ModelSpec:
    for name, data in {**model_files, **replace}.items():
        (tmp_path / name).write_bytes(data)
    return ModelSpec(str(tmp_path / zoo_builder.SYMBOL_FILE), str(tmp_path / zoo_builder.PARAMS_FILE),
                     str(tmp_path / zoo_builder.SYNSET_FILE))


def _params_without(model_files, drop: str, reshape: bool = False) -> bytes:
    params = dict(mx.nd.load_frombuffer(model_files[zoo_builder.PARAMS_FILE]))
    if reshape:
        params[drop] = mx.nd.zeros((3, 3))
    else:
        del params[drop]
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "x.params")
        mx.nd.save(p, params)
        return open(p, "rb").read()


def test_missing_parameter_is_an_error_naming_it(tmp_path, model_files):
    spec = _spec_with(tmp_path, model_files, **{zoo_builder.PARAMS_FILE: _params_without(model_files, "arg:fc1_bias")})
    with pytest.raises(ModelError, match=r"no parameter for symbol argument 'fc1_bias'"):
        check_model(fetch_model(spec), spec)


def test_missing_aux_state_is_an_error_naming_it(tmp_path, model_files):
    spec = _spec_with(tmp_path, model_files,
                      **{zoo_builder.PARAMS_FILE: _params_without(model_files, "aux:bn0_moving_var")})
    with pytest.raises(ModelError, match=r"'bn0_moving_var'"):
        check_model(fetch_model(spec), spec)


def test_mis_shaped_parameter_is_an_error(tmp_path, model_files):
    spec = _spec_with(tmp_path, model_files,
                      **{zoo_builder.PARAMS_FILE: _params_without(model_files, "arg:conv0_weight", reshape=True)})
    with pytest.raises(ModelError, match=r"'conv0_weight' has shape \(3, 3\), symbol .* expects \(64, 3, 7, 7\)"):
        check_model(fetch_model(spec), spec)


def test_label_count_must_match(tmp_path, model_files):
    spec = _spec_with(tmp_path, model_files, **{zoo_builder.SYNSET_FILE: b"n00000001 only one\n"})
    with pytest.raises(ModelError, match="1 labels, but the model has 1000 classes"):
        check_model(fetch_model(spec), spec)


def test_missing_file_is_named(tmp_path, model_files):
    spec = _spec_with(tmp_path, model_files)
    spec = ModelSpec(spec.sym_url, str(tmp_path / "nope.params"), spec.label_url)
    with pytest.raises(ModelError, match=r"cannot read model params: .*nope\.params: no such file"):
        fetch_model(spec)
