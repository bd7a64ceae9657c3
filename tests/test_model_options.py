"""Declared model options (ddbench.models.options): every registered model's options are checked before anything
is built, and runs check every model's options before any data loads.

Library level: for every model of list_models() and every option it declares, a bad value is refused with one line
naming the option, the value and the valid values, the defaults build, and the declared options are the builder's
keyword parameters. CLI level: a bad option in the model block, a method's model_overrides or teacher block,
eval.model_kwargs or eval.teacher.model_kwargs, or a timm name timm does not know, ends in exit 2 with one
`error:` line and no record, before the data is loaded.
"""

from __future__ import annotations

from typing import Any

import pytest

from ddbench.models import check_model_options, create_model, list_models, model_spec
from ddbench.models.options import (
    Choice,
    IntList,
    IntRange,
    LayerList,
    ModelSpec,
    Number,
    Option,
    keyword_parameters,
)
from ddbench.utils import DDBenchError
import test_bad_inputs as bad_inputs
from test_bad_inputs import RUN, Case, good_artifact

pytestmark = pytest.mark.usefixtures("one_thread")

OPTIONS = [(name, option) for name in list_models() for option in sorted(model_spec(name).options)]


def bad_values(spec: Option) -> list[Any]:
    """Values `spec` must refuse: the wrong type, and just outside each bound (or off the choices)."""
    values: list[Any] = ["not-a-valid-value", True]
    if isinstance(spec, IntRange):
        values += [1.5] + ([spec.low - 1] if spec.low is not None else []) + (
            [spec.high + 1] if spec.high is not None else [])
    elif isinstance(spec, Number):
        if spec.low is not None:
            values.append(spec.low if spec.low_open else spec.low - 0.5)
        if spec.high is not None:
            values.append(spec.high if spec.high_open else spec.high + 0.5)
        values.append(float("nan"))
    elif isinstance(spec, Choice):
        values += [f"{spec.choices[0]}_typo", 0]
    elif isinstance(spec, IntList):
        values += [[spec.low] * (spec.length - 1), [spec.low - 1] * spec.length, [1.5] * spec.length]
    elif isinstance(spec, LayerList):
        values += [[], [spec.marker], [0, spec.marker], ["X", 8], [8.5]]
    else:  # a new Option kind needs its bad values here
        raise AssertionError(f"no bad values for {type(spec).__name__}")
    return values


def refusal(name: str, options: dict[str, Any], where: str | None = "model", shape=None) -> str:
    with pytest.raises(DDBenchError) as info:
        check_model_options(name, options, where, shape)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ------------------------------------------------------------------------------------------ library level


def test_every_model_declares_its_options():
    """Registration refused any mismatch; here the declared options are read back from every model."""
    assert {"convnet", "convnet_bn", "alexnet", "vgg11", "resnet18", "lenet", "mlp", "mobilenetv2_cifar",
            "efficientnet_b0_cifar"} <= set(list_models())
    assert set(model_spec("convnet").options) == {"width", "depth", "norm", "activation", "pooling"}
    assert set(model_spec("mlp").options) == {"width", "depth"}
    assert set(model_spec("efficientnet_b0_cifar").options) == {"width", "dropout", "drop_connect"}
    for name in ("alexnet", "lenet", "resnet18_cifar"):
        assert not model_spec(name).options


def test_an_undeclared_parameter_is_refused_at_registration():
    def builder(channels, num_classes, image_size, width=8, depth=2):
        raise AssertionError("never built")

    assert keyword_parameters(builder) == {"width": 8, "depth": 2}
    with pytest.raises(TypeError, match="undeclared: \\['depth'\\]"):
        ModelSpec.declare("toy", builder, {"width": IntRange(1)})
    with pytest.raises(TypeError, match="not parameters: \\['height'\\]"):
        ModelSpec.declare("toy", builder, {"width": IntRange(1), "depth": IntRange(1), "height": IntRange(1)})
    assert set(ModelSpec.declare("toy", builder, {"width": IntRange(1)}, fixed=("depth",)).options) == {"width"}


@pytest.mark.parametrize("name, option", OPTIONS, ids=[f"{n}.{o}" for n, o in OPTIONS])
def test_a_bad_value_of_each_option_is_refused(name, option):
    spec = model_spec(name)
    for value in bad_values(spec.options[option]):
        message = refusal(name, {option: value})
        assert f"model.{option}" in message and name in message and repr(value) in message, message
        assert spec.options[option].describe() in message and "e.g. model." in message, message
        with pytest.raises(DDBenchError, match=f"{name} option {option}"):
            create_model(name, 1, 10, 16, **{option: value})
    example = spec.example_value(option)
    assert spec.options[option].accepts(example), (name, option, example)  # the fix an error suggests is valid
    check_model_options(name, {option: example}, "model")


@pytest.mark.parametrize("name", list_models())
def test_an_unknown_option_is_refused_with_the_valid_ones(name):
    message = refusal(name, {"no_such_option": 1}, "eval.model_kwargs." + name)
    assert f"eval.model_kwargs.{name}.no_such_option" in message, message
    for option in model_spec(name).options:
        assert option in message, message
    if not model_spec(name).options:
        assert "takes no options" in message


@pytest.mark.parametrize("name", list_models())
def test_the_declared_defaults_build(name):
    defaults = {k: v for k, v in model_spec(name).defaults.items() if v is not None}
    check_model_options(name, defaults, "model", shape=(1, 16))
    model = create_model(name, 1, 10, 16, **defaults)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_none_means_the_default():
    check_model_options("convnet", {"width": None, "depth": None}, "model")
    check_model_options("alexnet", {"width": None}, "model")


def test_messages_name_the_option_value_range_and_a_fix():
    assert refusal("convnet", {"width": 0}, "eval.model_kwargs.convnet") == (
        "eval.model_kwargs.convnet.width must be an int >= 1, got 0; e.g. eval.model_kwargs.convnet.width=128.")
    assert refusal("convnet", {"norm": "groupnorm_typo"}) == (
        "model.norm (convnet) must be one of 'instancenorm', 'batchnorm', 'layernorm', 'groupnorm', 'none', "
        "got 'groupnorm_typo'; e.g. model.norm=instancenorm.")
    assert "e.g. model.width=128" in refusal("convnet", {"widht": 32})  # the closest valid option
    assert "e.g. model.depth=3" in refusal("convnet", {"depth": 0})
    assert "model=alexnet selects its own config block" in refusal("alexnet", {"width": 128})
    assert "'batchnorm'" in refusal("convnet_bn", {"norm": "instancenorm"})
    assert "a number > 0" in refusal("mobilenetv2_cifar", {"width": 0})
    assert "a number in [0, 1)" in refusal("efficientnet_b0_cifar", {"drop_connect": 1})
    assert "e.g. model.cfg=[64,M,128,M]" in refusal("vgg11", {"cfg": [0]})
    assert "a list of 4 ints >= 1" in refusal("resnet18_ap", {"layers": [2, 2, 2]})


def test_convnet_depth_is_checked_against_the_image_size():
    assert refusal("convnet", {"depth": 5}, shape=(3, 16)) == (
        "model.depth=5 (convnet) is too deep for 16px images; use depth <= 4.")
    check_model_options("convnet", {"depth": 5}, "model", shape=(1, 28))  # padded to 32 px
    check_model_options("convnet", {"depth": 5}, "model")  # no shape: nothing to check it against
    with pytest.raises(DDBenchError, match="convnet depth=6 is too deep for 32px"):
        create_model("convnet", 3, 10, 32, depth=6)


def test_timm_names_are_checked_without_building(monkeypatch):
    timm = pytest.importorskip("timm")

    def no_build(*args, **kwargs):
        raise AssertionError("the check built a model")

    monkeypatch.setattr(timm, "create_model", no_build)
    check_model_options("timm:resnet10t", {"drop_rate": 0.1}, "model")  # timm's own options pass through
    message = refusal("timm:definitely_not_a_model", {}, "model.name")
    assert "definitely_not_a_model" in message and "timm.list_models" in message and "model.name" in message
    assert refusal("timm:resnet10t", {"pretrained": True}).startswith("model.pretrained=true is not supported")
    assert "would load weights" in refusal("timm:resnet10t", {"checkpoint_path": "x.pth"})
    assert "set from the dataset" in refusal("timm:resnet10t", {"num_classes": 3})


# ------------------------------------------------------------------------------------------ CLI level

EVAL_CONVNET = ("eval.models=[convnet]",)
CLI_CASES = [
    Case("model-width", "ddbench-run", (*RUN, "model.width=-1"), ("model.width", "-1", ">= 1")),
    Case("model-depth", "ddbench-run", (*RUN, "model.depth=0"), ("model.depth", "0", ">= 1")),
    Case("model-depth-too-deep", "ddbench-run", (*RUN, "model.depth=5"), ("model.depth=5", "16px", "depth <= 4")),
    Case("model-norm", "ddbench-run", (*RUN, "model.norm=groupnorm_typo"), ("model.norm", "groupnorm_typo",
                                                                             "instancenorm")),
    Case("model-unknown-key", "ddbench-run", (*RUN, "+model.widht=32"), ("model.widht", "valid options", "width")),
    Case("model-unknown-key-no-plus", "ddbench-run", (*RUN, "model.widht=32"), ("model.widht", "+model.widht")),
    Case("model-alexnet-option", "ddbench-run", (*RUN, "model=alexnet", "+model.width=32"),
         ("alexnet takes no options", "model.width")),
    Case("model-vgg-cfg", "ddbench-run", (*RUN, "model=vgg11", "+model.cfg=[0,M]"), ("model.cfg", "[0, 'M']")),
    Case("model-resnet-norm", "ddbench-run", (*RUN, "model=resnet18", "+model.norm=bn"), ("model.norm", "'bn'")),
    Case("model-timm-unknown", "ddbench-run", (*RUN, "model=timm", "model.name=timm:not_a_timm_model_xyz"),
         ("not_a_timm_model_xyz", "timm.list_models")),
    Case("eval-kwargs-width", "ddbench-run", ("method=random", "dataset=digits", "ipc=1", *EVAL_CONVNET,
                                              "++eval.model_kwargs={convnet:{width:0}}"),
         ("eval.model_kwargs.convnet.width", "0", ">= 1")),
    Case("eval-kwargs-mobilenet", "ddbench-run", (*RUN, "eval.models=[mobilenetv2_cifar]",
                                                  "++eval.model_kwargs={mobilenetv2_cifar:{width:0}}"),
         ("eval.model_kwargs.mobilenetv2_cifar.width", "> 0")),
    Case("eval-kwargs-efficientnet", "ddbench-run", (*RUN, "++eval.model_kwargs={efficientnet_b0_cifar:{dropout:1}}"),
         ("eval.model_kwargs.efficientnet_b0_cifar.dropout", "[0, 1)")),
    Case("eval-kwargs-unknown-model", "ddbench-run", (*RUN, "++eval.model_kwargs={convnt:{width:8}}"),
         ("eval.model_kwargs key", "convnt")),
    Case("eval-kwargs-not-mapping", "ddbench-run", (*RUN, "++eval.model_kwargs={convnet:8}"),
         ("eval.model_kwargs.convnet", "mapping")),
    Case("eval-timm-unknown", "ddbench-run", (*RUN, "eval.models=[timm:not_a_timm_model_xyz]"),
         ("not_a_timm_model_xyz", "eval.models entry")),
    Case("eval-teacher-kwargs", "ddbench-run", (*RUN, "++eval.teacher.model_kwargs={convnet:{depth:0}}"),
         ("eval.teacher.model_kwargs.convnet.depth", ">= 1")),
    Case("cda-teacher-kwargs", "ddbench-run", ("method=cda", "dataset=digits", "smoke=true",
                                               "++method.teacher.model_kwargs={convnet_bn:{width:0}}"),
         ("method.teacher.model_kwargs.convnet_bn.width", ">= 1")),
    Case("infer-teacher-norm", "ddbench-distill", ("method=infer", "dataset=digits", "smoke=true",
                                                   "++method.teacher.model_kwargs={vgg11_bn:{norm:instancenorm}}"),
         ("method.teacher.model_kwargs.vgg11_bn.norm", "batchnorm")),
    Case("mtt-model-overrides", "ddbench-run", ("method=mtt", "dataset=digits", "smoke=true",
                                                "++method.model_overrides={width:0}"),
         ("method.model_overrides.width", ">= 1")),
    Case("experts-model-width", "ddbench-experts", ("method=mtt", "dataset=digits", "smoke=true", "model.width=0"),
         ("model.width", ">= 1")),
    Case("eval-artifact-kwargs", "ddbench-eval", ("artifact={fixture}", "dataset=digits", "smoke=true",
                                                  "++eval.model_kwargs={convnet:{norm:nope}}"),
         ("eval.model_kwargs.convnet.norm", "'nope'"), make=good_artifact),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_a_bad_model_option_ends_the_run_before_data_loads(case: Case, tmp_path, monkeypatch, capsys):
    """test_bad_inputs' contract (exit 2, one `error:` line naming the option, no traceback, record or artifact),
    with the data loader replaced by one that fails the run: the check comes before any data loads."""
    from ddbench import pipeline

    def no_data(*args, **kwargs):
        raise AssertionError("data was loaded before the model options were checked")

    monkeypatch.setattr(pipeline, "load_splits", no_data)
    bad_inputs.test_bad_input_ends_in_one_clear_line(case, tmp_path, monkeypatch, capsys)


def _shipped(group: str, smoke: tuple[str, ...] = ("false",)) -> list[tuple[str, str]]:
    from pathlib import Path

    import ddbench.conf

    names = sorted(p.stem for p in (Path(ddbench.conf.__file__).parent / group).glob("*.yaml"))
    return [(f"{group}={name}", s) for name in names for s in smoke]


# method and eval files have `smoke` blocks of their own (teacher and eval model_kwargs among them)
SHIPPED = [*_shipped("model"), *_shipped("method", ("false", "true")), *_shipped("eval", ("false", "true")),
           *_shipped("experiment")]


@pytest.mark.parametrize("choice, smoke", SHIPPED, ids=[f"{c}-smoke={s}" for c, s in SHIPPED])
def test_the_shipped_configs_have_valid_model_options(choice, smoke, tmp_path):
    """Every conf/model block, and the model options of every method, eval protocol and experiment file, pass."""
    from ddbench.api import compose_config
    from ddbench.checks import check_dataset, check_eval, check_method_models, check_model_block, image_shape

    cfg = compose_config([choice, f"smoke={smoke}", f"paths.cache={tmp_path}", f"paths.records={tmp_path}"])
    shape = image_shape(cfg["dataset"], check_dataset(cfg["dataset"]))
    check_model_block(cfg["model"], shape)
    check_method_models(cfg["method"], cfg["model"], shape)
    check_eval(cfg["eval"], shape)
