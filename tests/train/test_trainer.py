"""Training: the loss and its schedule, deterministic patches, the test crops (exactly the
reference `crops_uint8`), BatchNorm recalibration, small crops travelling in the
checkpoint, a tiny end-to-end run writing a loadable checkpoint, bit-exact kill-and-resume
(with and without recalibration), and two-process data-parallel training on CPU (gloo)."""

import json
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the train extra (torch) is not installed")
cv2 = pytest.importorskip("cv2")

from pmtiqa_deploy.preprocess import crops_uint8, decode_image, normalize  # noqa: E402
from pmtiqa_deploy.spec import PreprocessSpec, ScoreSpec  # noqa: E402
from pmtiqa_deploy.train.checkpoint import load_checkpoint  # noqa: E402
from pmtiqa_deploy.train.datasets import Dataset, Item  # noqa: E402
from pmtiqa_deploy.train.experiment import run_experiment  # noqa: E402
from pmtiqa_deploy.train.model import ModelConfig, build_model  # noqa: E402
from pmtiqa_deploy.train.objective import learning_rate, loss_weights, pmt_loss  # noqa: E402
from pmtiqa_deploy.train.patches import (  # noqa: E402
    ImageStore,
    epoch_plan,
    grid_sample,
    random_crop,
    shard_batches,
    transform_crop,
)
from pmtiqa_deploy.train.trainer import (  # noqa: E402
    Cluster,
    TrainConfig,
    grid_batches,
    predict,
    recalibrate_batchnorm,
)

TINY = TrainConfig(backbone="resnet18", backbone_weights="random", epochs=2, batch_size=4, lr=1e-3,
                   train_crops=1, test_crops=2, seed=3)
# The demo's additions at a test's scale: small crops (the MS pooling follows), BatchNorm
# recalibration before each evaluation, and every crop transform.
SMALL = TrainConfig(**{**TINY.to_dict(), "crop_size": 64, "bn_recalibration": 16,
                       "augment": "dihedral+channels"})


def make_dataset(root, references=5, levels=4, size=(240, 228)):
    """Smooth random textures (one per reference) blurred and noised at `levels` strengths;
    the score falls with the strength."""
    rng = np.random.default_rng(0)
    items = []
    for r in range(references):
        base = cv2.GaussianBlur(rng.uniform(0, 255, (size[1], size[0], 3)), (0, 0), 3 + r)
        base = cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX)
        for level in range(levels):
            image = cv2.GaussianBlur(base, (0, 0), 0.3 + 1.5 * level) + rng.normal(0, 6 * level, base.shape)
            path = root / f"ref{r}" / f"level{level}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), np.clip(image, 0, 255).astype(np.uint8))
            items.append(Item(path, float(95 - 22 * level + r), f"ref{r}"))
    return Dataset("tiny", root, tuple(items), ScoreSpec(0.0, 100.0, units="test-MOS", dataset="tiny"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(2)
    return make_dataset(tmp_path_factory.mktemp("tiny"))


def test_progressive_schedule_moves_weight_from_levels_to_score():
    weights = [loss_weights(t, 5) for t in range(5)]
    assert weights == [(0.0, 1.0), (0.25, 0.75), (0.5, 0.5), (0.75, 0.25), (1.0, 0.0)]
    assert all(loss_weights(t, 7, "fixed") == (0.5, 0.5) for t in range(7))
    assert loss_weights(0, 1) == (1.0, 0.0)
    with pytest.raises(ValueError, match="schedule"):
        loss_weights(0, 3, "linear")
    with pytest.raises(ValueError, match="outside"):
        loss_weights(3, 3)


def test_learning_rate_divides_by_ten_every_step():
    assert [learning_rate(e, 2e-4, 6) for e in (0, 5, 6, 11, 12)] == pytest.approx([2e-4, 2e-4, 2e-5, 2e-5, 2e-6])


def test_pmt_loss_is_the_weighted_sum_of_l1_and_cross_entropy():
    spec = ScoreSpec(0.0, 100.0)
    score, target = torch.tensor([10.0, 60.0, 99.0]), torch.tensor([20.0, 50.0, 100.0])
    logits = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    levels = torch.from_numpy(spec.level(target.numpy()))
    assert levels.tolist() == [2, 5, 9]  # 100 clamps into the top level
    parts = pmt_loss(score, logits, target, levels, (0.25, 0.75))
    l1 = (score - target).abs().mean()
    ce = torch.nn.functional.cross_entropy(logits, levels)
    assert torch.allclose(parts.total, 0.25 * l1 + 0.75 * ce)
    half = pmt_loss(score, logits, target, levels, (0.25, 0.75), denominator=1.5)
    assert torch.allclose(half.total, 2 * parts.total)


def test_epoch_plan_depends_only_on_seed_and_epoch():
    keys = ("image", "fy", "fx", "symmetry", "channels")
    a, b = epoch_plan(6, 3, seed=1, epoch=4), epoch_plan(6, 3, seed=1, epoch=4)
    assert all(np.array_equal(getattr(a, k), getattr(b, k)) for k in keys)
    assert sorted(a.image.tolist()) == sorted(list(range(6)) * 3)
    assert not np.array_equal(a.fy, epoch_plan(6, 3, seed=1, epoch=5).fy)
    assert not np.array_equal(a.fy, epoch_plan(6, 3, seed=2, epoch=4).fy)


@pytest.mark.parametrize("augment,symmetries,orders", [
    ("flip", {0, 1}, {0}), ("dihedral", set(range(8)), {0}), ("dihedral+channels", set(range(8)), set(range(6)))])
def test_epoch_plan_draws_every_transform_its_augment_allows(augment, symmetries, orders):
    plan = epoch_plan(40, 10, seed=0, epoch=0, augment=augment)
    assert set(plan.symmetry.tolist()) == symmetries and set(plan.channels.tolist()) == orders
    with pytest.raises(ValueError, match="augment"):
        epoch_plan(4, 1, seed=0, epoch=0, augment="mixup")


def test_random_crop_reaches_every_edge():
    image = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    assert np.array_equal(random_crop(image, 0.0, 0.0, 3), image[:3, :3])
    assert np.array_equal(random_crop(image, 0.9999, 0.9999, 3), image[2:, 4:])


def test_crop_transforms_are_the_eight_symmetries_and_six_channel_orders():
    crop = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    assert transform_crop(crop, 0) is crop
    assert np.array_equal(transform_crop(crop, 1), crop[:, ::-1])  # the paper's flip
    turned = {transform_crop(crop, s).tobytes() for s in range(8)}
    expected = {np.rot90(m, k).tobytes() for m in (crop, crop[:, ::-1]) for k in range(4)}
    assert turned == expected and len(turned) == 8
    orders = {tuple(transform_crop(crop, 0, c)[0, 0].tolist()) for c in range(6)}
    assert len(orders) == 6 and all(sorted(o) == [0, 1, 2] for o in orders)


def test_shards_cover_the_single_process_batches():
    single = shard_batches(22, 6)
    assert single == [list(range(0, 6)), list(range(6, 12)), list(range(12, 18))]
    shards = [shard_batches(22, 6, rank, 2) for rank in range(2)]
    for step, batch in enumerate(single):
        assert sorted(shards[0][step] + shards[1][step]) == batch


def test_grid_sample_is_distinct_fixed_by_seed_and_complete_when_short():
    sample = grid_sample(6, 3, 10, seed=1)
    assert len(sample) == len(set(sample)) == 10
    assert all(0 <= i < 6 and 0 <= c < 3 for i, c in sample)
    assert sample == grid_sample(6, 3, 10, seed=1) and sample != grid_sample(6, 3, 10, seed=2)
    assert sorted(grid_sample(6, 3, 100, seed=1)) == [(i, c) for i in range(6) for c in range(3)]
    assert grid_sample(6, 3, 0, seed=1) == []


def _batchnorms(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_batchnorm_recalibration_averages_the_current_weights_statistics(tiny):
    spec = PreprocessSpec(crop_size=64, crop_count=2)
    store = ImageStore([item.path for item in tiny.items], spec)
    images, crops = [0, 3, 5, 7, 9, 12], [0, 1, 1, 0, 0, 1]
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18", crop_size=64, pool=2), "random")
    model.eval()
    first = _batchnorms(model)[0]
    # Training-mode statistics of the first layer's input, batch by batch (batches of 4:
    # the remainder of 2 is left out so that no small batch weighs as much as a full one).
    seen = []
    hook = first.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    batches = list(grid_batches(store, images, crops, batch_size=4))
    assert [b.shape[0] for b in batches] == [4]
    for layer in _batchnorms(model):  # stale statistics must not leak into the result
        layer.running_mean.fill_(5.0)
        layer.running_var.fill_(9.0)
    assert recalibrate_batchnorm(model, batches) == 1
    hook.remove()
    x = seen[0]
    assert torch.allclose(first.running_mean, x.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(first.running_var, x.var(dim=(0, 2, 3), unbiased=True), rtol=1e-4)
    assert all(layer.momentum == 0.1 for layer in _batchnorms(model)) and not model.training
    # The statistics changed every layer, and recomputing them gives the very same bits.
    after = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    assert all(not torch.all(v == 5.0) for k, v in after.items() if k.endswith("running_mean"))
    recalibrate_batchnorm(model, grid_batches(store, images, crops, batch_size=4))
    assert all(torch.equal(after[k], v) for k, v in model.state_dict().items() if k in after)
    # Several batches count equally (cumulative average), the remainder is left out.
    assert recalibrate_batchnorm(model, grid_batches(store, images, crops, batch_size=3)) == 2


def test_small_crops_with_recalibration_travel_in_the_checkpoint(tiny, tmp_path):
    run_experiment(tiny, SMALL, tmp_path / "run", progress=False)
    model, info = load_checkpoint(tmp_path / "run" / "checkpoint")
    assert info.config.crop_size == info.preprocess.crop_size == 64 and info.config.pool == 2
    assert info.training["config"]["bn_recalibration"] == 16
    # The saved statistics are the recalibrated ones of the saved weights.
    spec = info.preprocess
    store = ImageStore([item.path for item in tiny.items], spec)
    from pmtiqa_deploy.train.trainer import split_dataset

    split = split_dataset(tiny, SMALL.seed)
    pairs = grid_sample(len(split.train), spec.crop_count, SMALL.bn_recalibration, SMALL.seed)
    saved = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    images, crops = [split.train[i] for i, _ in pairs], [c for _, c in pairs]
    recalibrate_batchnorm(model, grid_batches(store, images, crops))
    assert all(torch.allclose(saved[k], v, atol=1e-6) for k, v in model.state_dict().items() if k in saved)


def test_crop_size_must_fit_the_multi_scale_grid():
    for bad in (100, 16):
        with pytest.raises(ValueError, match="multiple of 32"):
            TrainConfig(crop_size=bad)
    with pytest.raises(ValueError, match="bn_recalibration"):
        TrainConfig(bn_recalibration=-1)


@pytest.mark.parametrize("resize", ["none", "fixed"])
def test_test_time_crops_are_the_reference_crops(tiny, resize):
    spec = PreprocessSpec(resize=resize, width=300 if resize == "fixed" else None,
                          height=250 if resize == "fixed" else None, crop_count=2)
    store = ImageStore([item.path for item in tiny.items], spec)
    for i in (0, 5):
        assert np.array_equal(store.test_crops(i), crops_uint8(decode_image(tiny.items[i].path), spec))
    # And the model sees exactly those crops, normalised by the reference `normalize`.
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18"), "random")
    seen = []
    model.stem.register_forward_hook(lambda module, args, output: seen.append(args[0].clone()))
    predict(model, store, (0, 5), Cluster())
    expected = np.concatenate([normalize(crops_uint8(decode_image(tiny.items[i].path), spec), spec)
                               for i in (0, 5)])
    assert np.array_equal(seen[0].contiguous().numpy(), expected)


def test_tiny_training_writes_a_loadable_checkpoint(tiny, tmp_path):
    summary = run_experiment(tiny, TINY, tmp_path / "run", progress=False)
    model, info = load_checkpoint(tmp_path / "run" / "checkpoint")
    assert info.config.backbone == "resnet18" and info.score == tiny.score
    assert info.preprocess.crop_count == 2 and info.preprocess.resize == "none"
    assert info.metrics["test"]["count"] == summary["rounds"][0]["test"]["count"] > 0
    assert set(info.metrics) == {"val", "test", "best_epoch"}
    assert info.training["dataset"] == "tiny" and info.training["config"]["epochs"] == 2
    assert not set(info.training["test_references"]) & set(info.training["val_references"])
    lines = (tmp_path / "run" / "round-0" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [0, 1]
    assert [r["l1_weight"] for r in records] == [0.0, 1.0]
    # The first progressive epoch trains no score head, so it is never the checkpoint.
    assert [r["best_epoch"] for r in records] == [-1, 1] and info.metrics["best_epoch"] == 1
    assert all(np.isfinite(r["loss"]) for r in records)
    assert (tmp_path / "run" / "round-0" / "test_scatter.png").read_bytes()[:4] == b"\x89PNG"
    stored = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert stored["median"]["srcc"] == pytest.approx(summary["rounds"][0]["test"]["srcc"], nan_ok=True)


class Stop(Exception):
    pass


@pytest.mark.parametrize("config", [TINY, SMALL], ids=["paper-like", "small-crops-recalibrated"])
def test_killed_and_resumed_run_equals_an_uninterrupted_one(tiny, tmp_path, config):
    whole = run_experiment(tiny, config, tmp_path / "whole", progress=False)

    def stop_after_first_epoch(epoch, record):
        if epoch == 0:
            raise Stop

    with pytest.raises(Stop):
        run_experiment(tiny, config, tmp_path / "cut", progress=False, epoch_callback=stop_after_first_epoch)
    assert not (tmp_path / "cut" / "checkpoint").exists()
    with pytest.raises(Exception, match="already holds a run"):
        run_experiment(tiny, config, tmp_path / "cut", progress=False)
    with pytest.raises(Exception, match="different config"):
        run_experiment(tiny, TrainConfig(**{**config.to_dict(), "lr": 2e-3}), tmp_path / "cut",
                       resume=True, progress=False)
    resumed = run_experiment(tiny, config, tmp_path / "cut", resume=True, progress=False)

    for key in ("best_epoch", "val", "test"):
        assert resumed["rounds"][0][key] == whole["rounds"][0][key]
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "whole" / "checkpoint" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logs = [[json.loads(line) for line in (tmp_path / run / "round-0" / "metrics.jsonl").read_text().splitlines()]
            for run in ("whole", "cut")]
    assert [r["loss"] for r in logs[0]] == [r["loss"] for r in logs[1]]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, dataset, out, config=TINY):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        summary = run_experiment(dataset, config, out, progress=False)
        (out / f"rank{rank}.json").write_text(json.dumps(summary["rounds"][0]))
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_data_parallel_training_on_cpu(tiny, tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no gloo distributed backend")
    out = tmp_path / "ddp"
    out.mkdir()
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), tiny, out), nprocs=2, join=True)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    for record in ranks:
        record.pop("train_seconds")
    assert ranks[0] == ranks[1]  # every process agrees on the metrics and the best epoch
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and set(summary["median"]) == {"srcc", "plcc", "krcc"}
    _, info = load_checkpoint(out / "checkpoint")
    assert info.training["processes"] == 2 and info.metrics["test"]["count"] > 0
    assert len((out / "round-0" / "metrics.jsonl").read_text().splitlines()) == 2


def _predictions(path):
    lines = path.read_text().splitlines()[1:]
    return [line.split(",")[0] for line in lines], np.array([float(line.split(",")[3]) for line in lines])


def test_data_parallel_evaluation_and_checkpoint_match_one_process(tiny, tmp_path):
    """DDP against one process. Training itself cannot match bit for bit (BatchNorm takes
    statistics per process, over half batches, as plain DDP does), so the weights are held
    still (a learning rate of 1e-12 moves no float32 weight) and BatchNorm is re-estimated
    before each evaluation, the same on every process: then everything else a
    data-parallel run does differently (sharded batches and evaluation, gathering the
    predictions back into order, choosing and writing the checkpoint) must give exactly the
    single process's predictions."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no gloo distributed backend")
    still = TrainConfig(**{**TINY.to_dict(), "lr": 1e-12, "bn_recalibration": 8})
    out = tmp_path / "ddp"
    out.mkdir()
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), tiny, out, still), nprocs=2, join=True)
    torch.set_num_threads(1)
    run_experiment(tiny, still, tmp_path / "single", progress=False)
    (ddp_paths, ddp), (one_paths, one) = (_predictions(folder / "round-0" / "test_predictions.csv")
                                          for folder in (out, tmp_path / "single"))
    assert ddp_paths == one_paths and len(set(one.round(3))) > 1  # same images, not all alike
    np.testing.assert_allclose(ddp, one, rtol=0, atol=1e-4)
    ddp_model, _ = load_checkpoint(out / "checkpoint")
    one_model, _ = load_checkpoint(tmp_path / "single" / "checkpoint")
    for (name, a), b in zip(ddp_model.state_dict().items(), one_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=name)


@pytest.mark.slow
def test_search_tries_the_authors_ranges_and_resumes_its_trials(tiny, tmp_path):
    from pmtiqa_deploy.train.experiment import preprocess_spec
    from pmtiqa_deploy.train.search import search
    from pmtiqa_deploy.train.trainer import split_dataset

    config = TrainConfig(**{**TINY.to_dict(), "epochs": 1, "train_crops": 2})
    store = ImageStore([item.path for item in tiny.items], preprocess_spec(tiny, config.test_crops))
    split = split_dataset(tiny, config.seed)
    best = search(tiny, store, split, config, 2, tmp_path / "search", progress=False)
    assert 1e-4 <= best["lr"] <= 1e-3 and 9 <= best["batch_size"] <= 13 and best["trials"] == 2
    trials = [json.loads(line) for line in (tmp_path / "search" / "trials.jsonl").read_text().splitlines()]
    assert len(trials) == 2 and max(t["val"]["srcc"] for t in trials) == pytest.approx(best["val_srcc"])
    # A finished search is read back, not run again.
    assert search(tiny, store, split, config, 2, tmp_path / "search", progress=False) == best
