import pytest
import torch

from podium.errors import PodiumError
from podium.model.optim import create_optimizer, create_scheduler, end_epoch, step_scheduler


def _model():
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_optimizers_and_no_decay_on_bias_and_norm(name, cls):
    opt = create_optimizer(name, _model(), lr=0.1, weight_decay=0.01)
    assert isinstance(opt, cls)
    decays = sorted(g["weight_decay"] for g in opt.param_groups)
    assert decays == [0.0, 0.01]
    if name == "sgd":
        assert opt.param_groups[0]["nesterov"] is True
    with pytest.raises(PodiumError, match="Did you mean 'adamw'"):
        create_optimizer("adamww", _model(), lr=0.1)


def _run(name, epochs=4, steps=5, **kw):
    opt = create_optimizer("sgd", _model(), lr=0.1)
    cfg = create_scheduler(name, opt, epochs=epochs, steps_per_epoch=steps, **kw)
    lrs, step = [], 0
    for _epoch in range(epochs):
        for _ in range(steps):
            opt.step()
            step += 1
            if cfg:
                step_scheduler(cfg["scheduler"], global_step=step)
            lrs.append(opt.param_groups[0]["lr"])
        if cfg:
            end_epoch(cfg["scheduler"], 0.5)
    return lrs


def test_cosine_decays_smoothly_with_warmup():
    lrs = _run("cosine", warmup_epochs=1, min_lr=1e-4)
    assert lrs[0] < lrs[4]  # warmup rises
    assert max(lrs) > 0.08  # warmup overlaps the first part of the cosine (timm's warmup_prefix=False)
    assert lrs[-1] < 0.01 and all(a >= b for a, b in zip(lrs[5:], lrs[6:]))


def test_step_and_multistep_drop_by_gamma():
    lrs = _run("step", step_epochs=2, gamma=0.1)
    assert lrs[0] == pytest.approx(0.1) and lrs[-2] == pytest.approx(0.01)  # lrs[-1] is the next epoch's
    lrs = _run("multistep", milestones=[1, 3], gamma=0.5)
    assert lrs[0] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.025)


def test_plateau_decays_when_metric_stalls_and_resumes_exactly():
    lrs = _run("plateau", epochs=6, plateau_patience=1, gamma=0.5, warmup_epochs=1)
    assert lrs[0] < lrs[4] == pytest.approx(0.1)  # warmup
    assert lrs[-1] == pytest.approx(0.025)  # constant metric: patience 1 -> halve every 2 epochs after the first
    opt = create_optimizer("sgd", _model(), lr=0.1)
    sched = create_scheduler("plateau", opt, epochs=4, steps_per_epoch=2, plateau_patience=0)["scheduler"]
    sched.end_epoch(0.5)
    sched.end_epoch(0.4)
    state = sched.state_dict()
    opt2 = create_optimizer("sgd", _model(), lr=0.1)
    sched2 = create_scheduler("plateau", opt2, epochs=4, steps_per_epoch=2, plateau_patience=0)["scheduler"]
    sched2.load_state_dict(state)
    sched2.optimizer = opt2
    sched2.step_update(3)
    assert sched2.best == 0.5 and opt2.param_groups[0]["lr"] == pytest.approx(0.01)


def test_onecycle_and_none():
    lrs = _run("onecycle", warmup_epochs=1)
    assert lrs[0] < max(lrs) and lrs[-1] < max(lrs) / 10
    assert create_scheduler("none", create_optimizer("sgd", _model(), lr=0.1), epochs=2, steps_per_epoch=2) is None
    with pytest.raises(PodiumError, match="Did you mean 'cosine'"):
        create_scheduler("cosin", create_optimizer("sgd", _model(), lr=0.1), epochs=2, steps_per_epoch=2)


def test_momentum_optimizer_is_plain_sgd_momentum():
    opt = create_optimizer("momentum", _model(), lr=0.1, weight_decay=4e-5, momentum=0.9)
    assert isinstance(opt, torch.optim.SGD)
    assert all(g["nesterov"] is False and g["momentum"] == 0.9 for g in opt.param_groups)


def test_backbone_lr_mult_scales_only_the_backbone_and_survives_the_schedule():
    model = _model()
    head = {id(p) for p in model[2].parameters()}
    opt = create_optimizer("sgd", model, lr=0.1, weight_decay=0.01, backbone_lr_mult=0.1, head_prefix="2")
    seen = 0
    for g in opt.param_groups:
        for p in g["params"]:
            seen += 1
            assert g["lr"] == pytest.approx(0.1 if id(p) in head else 0.01)
            assert g["weight_decay"] == (0.0 if p.ndim <= 1 else 0.01)
    assert seen == len(list(model.parameters()))
    cfg = create_scheduler("cosine", opt, epochs=2, steps_per_epoch=3)
    for step in range(1, 4):
        opt.step()
        step_scheduler(cfg["scheduler"], global_step=step)
    lrs = {round(g["lr"] / opt.param_groups[0]["lr"], 6) for g in opt.param_groups}
    assert lrs <= {1.0, 10.0, 0.1}  # cosine scales every group by the same factor
    with pytest.raises(PodiumError, match="backbone_lr_mult needs"):
        create_optimizer("sgd", model, lr=0.1, backbone_lr_mult=0.5)


def _lrs_by_param(opt) -> dict:
    return {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}


def test_layer_decay_grades_a_timm_model_by_depth_and_survives_the_schedule():
    from podium.model.models import create_model, head_name

    model = create_model("test_efficientnet", 3, pretrained=False)
    opt = create_optimizer("sgd", model, lr=0.1, weight_decay=1e-4, layer_decay=0.5, head_prefix=head_name(model))
    lrs = _lrs_by_param(opt)
    named = dict(model.named_parameters())
    head, stem = lrs[id(named["classifier.weight"])], lrs[id(named["conv_stem.weight"])]
    assert head == pytest.approx(0.1) and stem < head * 0.5 ** 2  # several layers below the head
    assert all(g["weight_decay"] == 0 for g in opt.param_groups if any(p.ndim <= 1 for p in g["params"]))
    sched = create_scheduler("cosine", opt, epochs=2, steps_per_epoch=2)["scheduler"]
    step_scheduler(sched, global_step=1)
    after = _lrs_by_param(opt)
    assert after[id(named["conv_stem.weight"])] / after[id(named["classifier.weight"])] == pytest.approx(stem / head)


def test_layer_decay_groups_torchvision_cnns_by_block_and_refuses_models_without_layers():
    from podium.model.models import create_model, head_name

    model = create_model("tv/mobilenet_v2", 3, pretrained=False, dropout=0.2)
    opt = create_optimizer("sgd", model, lr=0.1, layer_decay=0.9, head_prefix=head_name(model), model_name="tv/mobilenet_v2")
    lrs = _lrs_by_param(opt)
    named = dict(model.named_parameters())
    head = lrs[id(named[head_name(model) + ".weight"])]
    first, last_block = lrs[id(named["features.0.0.weight"])], lrs[id(named["features.18.0.weight"])]
    assert head == pytest.approx(0.1) and last_block == pytest.approx(0.09)  # one layer below the head
    assert first == pytest.approx(0.1 * 0.9 ** 19)  # features.0..18 below the classifier
    tiny = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    with pytest.raises(PodiumError, match="cannot find the layers of tiny"):
        create_optimizer("sgd", tiny, lr=0.1, layer_decay=0.9, head_prefix="1", model_name="tiny")


def test_layer_decay_and_backbone_lr_mult_are_exclusive():
    from podium.schema import load_config

    with pytest.raises(PodiumError, match="layer_decay.*backbone_lr_mult"):
        load_config(None, ["train.layer_decay=0.9", "train.backbone_lr_mult=0.1"])
    assert load_config(None, ["train.layer_decay=0.9"]).train.layer_decay == 0.9
